use anyhow::Result;
use sockstun::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> Result<()> {
    // The command line with its config file (--config), if any.
    let cli: Cli = sockstun::config::cli_or_exit();
    let filter = EnvFilter::try_from_env("SOCKSTUN_LOG")
        .unwrap_or_else(|_| EnvFilter::new(cli.log_level.as_str()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Server(args) => sockstun::config::run_server(args),
        Command::Tun(args) => sockstun::config::run_tun(args),
        Command::Check(args) => {
            if !sockstun::check::run(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Completions(a) => sockstun::clidoc::completions(a.shell, &mut std::io::stdout()),
        Command::Man(a) => sockstun::clidoc::man(a.subcommand.as_deref(), &mut std::io::stdout()),
    }
}

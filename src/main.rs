use anyhow::Result;
use clap::Parser;
use sockstun::cli::{Cli, Command, ExecChildArgs};
use sockstun::exec;
use tracing_subscriber::EnvFilter;

fn logs(level: &str) {
    let filter = EnvFilter::try_from_env("SOCKSTUN_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> Result<()> {
    // `sockstun exec`'s namespace side, which it starts itself.
    if std::env::args_os().nth(1).is_some_and(|a| a == exec::CHILD) {
        let args = ExecChildArgs::parse_from(std::env::args_os().skip(1));
        logs(&args.log);
        exec::child::run(args);
    }
    // The command line with its config file (--config), if any.
    let cli: Cli = sockstun::config::cli_or_exit();
    logs(&cli.log_level);
    match cli.command {
        Command::Server(args) => sockstun::config::run_server(args),
        Command::Tun(args) => sockstun::config::run_tun(args),
        // The program's status; sockstun's own failure is 125, as env(1)
        // and timeout(1) report theirs, apart from any the program uses.
        Command::Exec(args) => match sockstun::config::run_exec(args, &cli.log_level) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("Error: {e:?}");
                std::process::exit(125)
            }
        },
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

//! The harness itself: namespaces are created and removed, also on panic.
mod common;
use common::*;

#[test]
fn netns_is_removed_on_drop() {
    if !require_root("netns_is_removed_on_drop") {
        return;
    }
    let name;
    {
        let t = Topology::new("hs");
        name = t.proxy.name.clone();
        let out = t.client.exec(&["ping", "-c1", "-W2", PROXY_V4]);
        assert!(out.status.success(), "veth link does not pass traffic");
    }
    let list = String::from_utf8(run(&["ip", "netns", "list"]).stdout).unwrap();
    assert!(!list.contains(&name), "namespace {name} survived its guard");
}

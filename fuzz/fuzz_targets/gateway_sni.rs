//! The gateway's ClientHello reader (TLS passthrough) and hostname table on arbitrary bytes:
//! any first bytes a client sends give an answer, never a panic, and a name it reports is
//! looked up without one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use trellis_proxy::gateway::hosts::{normalize, HostTable};
use trellis_proxy::gateway::sni::{parse, Hello};

fuzz_target!(|data: &[u8]| {
    let mut table = HostTable::default();
    table.insert("*.example.com", 1);
    table.insert("a.example.com", 2);
    if let Hello::ClientHello {
        server_name: Some(name),
    } = parse(data)
    {
        let _ = table.lookup(&normalize(&name));
    }
    let _ = table.lookup(&normalize(&String::from_utf8_lossy(data)));
});

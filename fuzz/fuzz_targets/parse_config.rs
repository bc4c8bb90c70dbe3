//! Arbitrary bytes into the config parser: it must never panic, and whatever it accepts must
//! serialize back to YAML that it accepts again, as the same set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_api::parse_documents;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(set) = parse_documents("fuzz.yaml", &text) {
        let yaml = set.to_yaml();
        match parse_documents("fuzz-roundtrip.yaml", &yaml) {
            Ok(again) => assert_eq!(set, again, "round trip changed the set:\n{yaml}"),
            Err(e) => panic!("round trip rejected its own output:\n{e}\n---\n{yaml}"),
        }
    }
});

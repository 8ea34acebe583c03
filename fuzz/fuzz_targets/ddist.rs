//! Fuzz target for the `.ddist` loader: `DistFile::from_bytes` must never panic, and
//! anything it accepts must save and reload to an equal value, byte-for-byte canonically.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/distribution/file.rs"]
#[allow(dead_code)]
mod file;

use file::DistFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(loaded) = DistFile::from_bytes(data) {
        let bytes = loaded.to_bytes().expect("a file that loads must save");
        let again = DistFile::from_bytes(&bytes).expect("a saved file must load");
        // Loading already rounded F16 prompts, so one round trip is exact.
        assert_eq!(loaded, again, "round trip changed the file");
        assert_eq!(again.to_bytes().expect("resave"), bytes, "saving is not canonical");
    }
});

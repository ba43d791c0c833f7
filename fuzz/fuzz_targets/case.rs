#![no_main]
//! Case files: any bytes must give a case or an error, never a panic or a hang.

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A repository with one model spec, so that cases get past the model lookup into validation.
fn root() -> &'static Path {
    static ROOT: OnceLock<tempfile_dir::Dir> = OnceLock::new();
    ROOT.get_or_init(tempfile_dir::Dir::new).path()
}

mod tempfile_dir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!("harness-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(p.join("cases/models")).unwrap();
            std::fs::write(
                p.join("cases/models/llama-tiny-mha.yaml"),
                include_str!("../../cases/models/llama-tiny-mha.yaml"),
            )
            .unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let root = root();
    let Ok(doc) = harness::yaml::Doc::from_bytes(&root.join("cases/fuzz.yaml"), data.to_vec()) else { return };
    let _ = harness::case::parse_case(root, doc, &mut Default::default());
});

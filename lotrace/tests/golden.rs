//! Golden outputs: every recorded fixture replayed in each output form must
//! print exactly what is committed under `tests/golden/`. A change to the
//! code that changes a byte of output shows here; a deliberate change is
//! re-blessed with `LOTRACE_BLESS=1 cargo test --test golden` and committed
//! on its own, with the reason.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const FIXTURES: &[&str] = &["ping5", "ksoftirqd"];

/// (file suffix, replay options)
const FORMS: &[(&str, &[&str])] = &[
    ("text", &[]),
    ("json", &["--format", "json"]),
    ("explain-en.text", &["--explain"]),
    ("explain-zh.text", &["--explain", "--lang", "zh"]),
    ("hist.text", &["--hist"]),
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn check(name: &str, got: &[u8]) -> Option<String> {
    let path = dir().join("golden").join(name);
    if std::env::var_os("LOTRACE_BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
        return None;
    }
    let want = std::fs::read(&path).unwrap_or_default();
    (want != got).then(|| {
        let (w, g) = (String::from_utf8_lossy(&want), String::from_utf8_lossy(got));
        let line = w
            .lines()
            .zip(g.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(w.lines().count().min(g.lines().count()));
        format!(
            "{name}: differs from line {}:\n  want: {}\n  got:  {}",
            line + 1,
            w.lines().nth(line).unwrap_or("<end>"),
            g.lines().nth(line).unwrap_or("<end>")
        )
    })
}

#[test]
fn replayed_fixtures_print_their_golden_output() {
    let tmp = tempfile::tempdir().unwrap();
    let mut diffs = Vec::new();
    for fixture in FIXTURES {
        let file = dir().join("fixtures").join(format!("{fixture}.lotrace"));
        let file = file.to_str().unwrap();
        for (suffix, options) in FORMS {
            let mut args = vec!["replay"];
            args.extend_from_slice(options);
            args.push(file);
            let out = lotrace(&args);
            assert!(out.status.success(), "{args:?}");
            diffs.extend(check(&format!("{fixture}.{suffix}"), &out.stdout));
        }
        let trace = tmp.path().join(format!("{fixture}.perfetto.json"));
        let out = lotrace(&["replay", "--perfetto", trace.to_str().unwrap(), file]);
        assert!(out.status.success());
        let got = std::fs::read(&trace).unwrap();
        diffs.extend(check(&format!("{fixture}.perfetto.json"), &got));
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

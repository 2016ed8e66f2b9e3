//! `gpu-check` with the CPU backend as its device: the generic burn ops (what a GPU runs)
//! against the hand-written CPU kernels, on random weights; the named configs against real
//! config.json files; `--device cuda` in a build without CUDA.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use whisper_moe::whisper::WhisperConfig;

fn gpu_check(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gpu-check")).args(args).output().expect("running gpu-check")
}

fn run_json(args: &[&str], name: &str) -> Value {
    let json = std::env::temp_dir().join(format!("wm-gpu-check-{name}-{}.json", std::process::id()));
    let mut all: Vec<&str> = args.to_vec();
    let j = json.to_str().unwrap().to_string();
    all.extend(["--json", &j]);
    let out = gpu_check(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "gpu-check {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    v
}

fn comparison<'a>(c: &'a Value, what: &str) -> &'a Value {
    c["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["what"].as_str().unwrap().starts_with(what))
        .unwrap_or_else(|| panic!("no comparison `{what}` in {c}"))
}

#[test]
fn generic_ops_match_the_cpu_kernels_on_tiny() {
    let r =
        run_json(&["--device", "cpu", "--config", "tiny", "--repeat", "1", "--batch", "1", "--experts", "2"], "tiny");
    let c = &r["configs"][0];
    assert_eq!(c["config"], "tiny");
    // transformers' WhisperForConditionalGeneration(tiny config).num_parameters()
    assert_eq!(c["parameters"].as_u64().unwrap(), 37_760_640);
    for what in ["encoder output", "decoder logits"] {
        let x = comparison(c, what);
        let rel = x["relative"].as_f64().unwrap();
        // Two different implementations (blocked GEMM attention with a polynomial exp, an erf
        // approximation) agree closely but not bit for bit: zero would mean the kernels were
        // not switched off.
        assert!(rel > 0.0 && rel < 1e-4, "{what}: relative difference {rel}");
        assert_eq!(x["ok"], true);
    }
    let grads = comparison(c, "LoRA gradients");
    assert!(grads["what"].as_str().unwrap().contains("(48 tensors"), "{grads}");
    assert!(grads["max_abs_reference"].as_f64().unwrap() > 0.0, "gradients must not be zero: {grads}");
    assert!(comparison(c, "training loss")["max_abs_reference"].as_f64().unwrap() > 1.0);
    for k in ["encoder_windows_per_s", "train_clips_per_s_top1", "train_clips_per_s_soft"] {
        assert!(c[k].as_f64().unwrap() > 0.0, "{k}: {}", c[k]);
    }
}

#[test]
fn reduced_large_v3_has_128_mel_bins_and_its_vocabulary() {
    let r = run_json(
        &["--config", "large-v3", "--layers", "1", "--repeat", "0", "--batch", "1", "--experts", "2", "--tokens", "4"],
        "large-v3",
    );
    let c = &r["configs"][0];
    // transformers: large-v3's config with one encoder and one decoder layer.
    assert_eq!(c["parameters"].as_u64().unwrap(), 120_208_640);
    assert_eq!(
        (c["d_model"].as_u64(), c["num_mel_bins"].as_u64(), c["vocab_size"].as_u64()),
        (Some(1280), Some(128), Some(51866))
    );
    assert!(c["comparisons"].as_array().unwrap().iter().all(|x| x["ok"] == true), "{c}");
}

#[test]
fn cuda_without_cuda_support_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return; // this build has CUDA; scripts/cuda.sh covers it
    }
    let out = gpu_check(&["--device", "cuda", "--repeat", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no CUDA support") && err.contains("--features cuda"), "{err}");
    let out = gpu_check(&["--config", "huge"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown Whisper config `huge`"));
}

/// The architecture fields of `WhisperConfig::named` against released config.json files.
#[test]
fn named_configs_equal_the_released_ones() {
    let check = |name: &str, path: &Path| {
        let real = WhisperConfig::from_file(&path.join("config.json")).unwrap();
        let mine = WhisperConfig::named(name).unwrap();
        let arch = |c: &WhisperConfig| {
            (
                (c.d_model, c.encoder_layers, c.decoder_layers, c.encoder_attention_heads, c.decoder_attention_heads),
                (c.encoder_ffn_dim, c.decoder_ffn_dim, c.num_mel_bins, c.vocab_size),
                (c.max_source_positions, c.max_target_positions, c.decoder_start_token_id, c.eos_token_id),
            )
        };
        assert_eq!(arch(&mine), arch(&real), "{name} vs {}", path.display());
    };
    if let Some(shared) = common::shared("named_configs_equal_the_released_ones") {
        check("tiny.en", &shared.join("models/whisper-tiny.en"));
    }
    if let Some(base) = common::multilingual_model("named_configs_equal_the_released_ones") {
        check("base", &base);
    }
}

/// bf16 and f16 base models (adapters fp32) on the generic path against the fp32 kernels: every
/// op of the forward and backward passes runs in the lower precision without a mixed-dtype
/// operation (the CPU backend refuses those), and the results stay within the precision's
/// tolerance but measurably away from fp32 (the cast happened).
#[test]
fn bf16_and_f16_base_models_stay_within_their_tolerance() {
    // 20 unit roundoffs: 20 * 2^-8 and 20 * 2^-11.
    for (precision, tolerance) in [("bf16", 0.078125), ("f16", 0.009765625)] {
        let r = run_json(
            &["--config", "tiny", "--repeat", "0", "--batch", "1", "--experts", "2", "--precision", precision],
            precision,
        );
        assert_eq!(r["precision"], precision);
        let c = &r["configs"][0];
        for what in ["encoder output", "decoder logits", "training loss", "LoRA gradients"] {
            let x = comparison(c, what);
            let rel = x["relative"].as_f64().unwrap();
            assert_eq!(x["tolerance"].as_f64().unwrap(), tolerance, "{x}");
            assert!(rel <= tolerance && x["ok"] == true, "{precision} {what}: {x}");
        }
        for what in ["encoder output", "decoder logits"] {
            // fp32 on the same path differs by ~1e-6 (the kernels' test above).
            let rel = comparison(c, what)["relative"].as_f64().unwrap();
            assert!(rel > 1e-4, "{precision} {what}: {rel} is fp32's difference; was the model cast?");
        }
    }
}

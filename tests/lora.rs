//! LoRA: untrained adapters are the base model, batched multi-expert rows equal separate
//! passes, only adapters get gradients, PEFT round trip, training resumes exactly.

mod common;

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use whisper_moe::lora::{LoraConfig, Route, Targets, trainable};
use whisper_moe::stage::experts::AdapterTask;
use whisper_moe::train::{Example, GradMap, Row, TrainConfig, sequence_losses, train};
use whisper_moe::whisper::peft::{load_experts, save_expert};
use whisper_moe::whisper::{Checkpoint, testing};

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("wm-lora-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn tiny(name: &str, device: &Device) -> Checkpoint {
    let d = tmp(name);
    testing::write_checkpoint(&d, 11, &[], &[]).unwrap();
    Checkpoint::load_dir(&d, device).unwrap()
}

fn clip(seed: usize) -> Vec<f32> {
    (0..16_000 + seed * 1000).map(|i| ((i * (seed + 3)) as f32 * 0.013).sin() * 0.3).collect()
}

/// Make every adapter's B random so the experts differ.
fn randomize_b(model: &mut whisper_moe::whisper::Whisper, device: &Device) {
    for (name, proj) in model.projs_mut() {
        if let Some(l) = proj.lora.as_mut() {
            let b = Tensor::<3>::random(l.b.dims(), burn::tensor::Distribution::Uniform(-0.5, 0.5), device);
            l.b = trainable(&format!("{name}.lora_B"), b);
        }
    }
}

fn all_targets() -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: Targets::Regex("all-linear".into()),
        use_rslora: false,
    }
}

fn logits(
    ck: &Checkpoint,
    model: &whisper_moe::whisper::Whisper,
    clips: &[Vec<f32>],
    route: Option<&Route>,
) -> Vec<f32> {
    let feats: Vec<Vec<f32>> = clips.iter().map(|c| ck.features(c)).collect();
    let n = clips.len();
    let tokens = Tensor::<2, Int>::from_data(
        TensorData::new((0..n * 5).map(|i| (i % 5) as i64 + 2).collect::<Vec<_>>(), [n, 5]),
        &ck.device,
    );
    model.forward(ck.mel_batch(&feats), tokens, route).into_data().try_into_vec_as().unwrap()
}

#[test]
fn untrained_adapter_is_exactly_the_base_model() {
    let dev = Device::flex();
    let ck = tiny("identity", &dev);
    let clips = vec![clip(1), clip(2)];
    let base = logits(&ck, &ck.model, &clips, None);
    let mut m = ck.model.clone();
    m.attach_lora(&all_targets(), 3, &dev).unwrap();
    let with = logits(&ck, &m, &clips, Some(&Route::per_row(&[Some(2), Some(0)], &dev)));
    assert_eq!(base, with, "B = 0 must give identical logits");
}

#[test]
fn batched_multi_expert_forward_equals_separate_passes() {
    let dev = Device::flex();
    dev.seed(5);
    let ck = tiny("batched", &dev);
    let mut m = ck.model.clone();
    m.attach_lora(&all_targets(), 3, &dev).unwrap();
    randomize_b(&mut m, &dev);
    let clips: Vec<Vec<f32>> = (0..4).map(clip).collect();
    let experts = [Some(0), Some(2), None, Some(1)];
    let batched = logits(&ck, &m, &clips, Some(&Route::per_row(&experts, &dev)));
    let per_row = batched.len() / clips.len();
    let mut worst = 0.0f32;
    for (i, e) in experts.iter().enumerate() {
        let single = match e {
            Some(e) => logits(&ck, &m, &clips[i..i + 1], Some(&Route::all(*e, 1, &dev))),
            None => logits(&ck, &ck.model, &clips[i..i + 1], None),
        };
        worst = worst.max(common::max_abs_diff(&batched[i * per_row..(i + 1) * per_row], &single));
    }
    eprintln!("batched vs separate: max |diff| = {worst:.2e}");
    assert!(worst <= 1e-5, "max |diff| {worst}");
    // And the experts really differ from each other and from the base model.
    let e0 = logits(&ck, &m, &clips[..1], Some(&Route::all(0, 1, &dev)));
    let e1 = logits(&ck, &m, &clips[..1], Some(&Route::all(1, 1, &dev)));
    assert!(common::max_abs_diff(&e0, &e1) > 1e-3);
}

struct GradsOf<'a> {
    grads: &'a burn::tensor::Gradients,
    path: Vec<String>,
    with: Vec<String>,
    without: Vec<String>,
}

impl ModuleVisitor for GradsOf<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.into());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        let path = self.path.join(".");
        if p.val().grad(self.grads).is_some() { self.with.push(path) } else { self.without.push(path) }
    }
}

#[test]
fn gradients_reach_only_lora_parameters() {
    let dev = Device::flex().autodiff();
    let ck = tiny("grads", &dev);
    let mut m = ck.model.clone();
    let cfg = LoraConfig {
        target_modules: Targets::Names(vec!["q_proj".into(), "v_proj".into(), "fc1".into()]),
        ..all_targets()
    };
    let names = m.attach_lora(&cfg, 2, &dev).unwrap();
    assert_eq!(names.len(), 2 * 3 + 2 * 5, "{names:?}"); // per encoder layer q, v, fc1; per decoder layer q, v (two attentions), fc1
    randomize_b(&mut m, &dev);
    let enc = m.encoder.forward(
        Tensor::from_data(ck.mel_batch(&[ck.features(&clip(1))]).into_data(), &dev),
        Some(&Route::all(1, 1, &dev)),
    );
    let seq: Vec<u32> = vec![26, 27, 0, 3, 25];
    let loss = sequence_losses(&m, enc, &[&seq], Some(&Route::all(1, 1, &dev))).sum();
    let grads = loss.backward();
    let mut v = GradsOf { grads: &grads, path: vec![], with: vec![], without: vec![] };
    m.visit(&mut v);
    assert_eq!(v.with.len(), 2 * names.len(), "{:?}", v.with);
    assert!(v.with.iter().all(|p| p.ends_with("lora.a") || p.ends_with("lora.b")), "{:?}", v.with);
    assert!(v.without.iter().all(|p| !p.contains("lora")), "{:?}", v.without);
    assert!(v.without.len() > 50);
    assert_eq!(GradMap::of(&m, &grads).0.len(), 2 * names.len());
}

#[test]
fn peft_layout_round_trips() {
    let dev = Device::flex();
    dev.seed(9);
    let ck = tiny("peft", &dev);
    let mut m = ck.model.clone();
    let cfg = LoraConfig { target_modules: Targets::Names(vec!["q_proj".into(), "v_proj".into()]), ..all_targets() };
    m.attach_lora(&cfg, 2, &dev).unwrap();
    randomize_b(&mut m, &dev);
    let dir = tmp("peft-out");
    let dirs: Vec<_> = (0..2).map(|e| dir.join(format!("expert_{e}"))).collect();
    for (e, d) in dirs.iter().enumerate() {
        save_expert(&m, e, &cfg, "tiny-test", d).unwrap();
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dirs[0].join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    let bytes = std::fs::read(dirs[1].join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let a = st.tensor("base_model.model.model.decoder.layers.1.encoder_attn.q_proj.lora_A.weight").unwrap();
    assert_eq!(a.shape(), [4, 16]);
    let b = st.tensor("base_model.model.model.encoder.layers.0.self_attn.v_proj.lora_B.weight").unwrap();
    assert_eq!(b.shape(), [16, 4]);

    let mut back = ck.model.clone();
    let loaded = load_experts(&mut back, &dirs, &dev).unwrap();
    assert_eq!(loaded.r, 4);
    let clips = vec![clip(3), clip(4)];
    let route = Route::per_row(&[Some(1), Some(0)], &dev);
    assert_eq!(logits(&ck, &m, &clips, Some(&route)), logits(&ck, &back, &clips, Some(&route)));
}

fn examples(ck: &Checkpoint) -> Vec<Example> {
    (0..6)
        .map(|i| Example {
            id: format!("u{i}"),
            audio: clip(i),
            tokens: {
                let mut t = ck.prompt(None, whisper_moe::whisper::Task::Transcribe).unwrap();
                t.extend(ck.tokenizer.encode(["the cat sat", "a dog ran", "big red sun"][i % 3]).unwrap());
                t.push(ck.tokenizer.eot);
                t
            },
            text: String::new(),
            ..Default::default()
        })
        .collect()
}

#[test]
fn a_stopped_run_resumes_to_the_same_adapters() {
    let dev = Device::flex().autodiff();
    let ck = tiny("resume", &dev);
    let ex = examples(&ck);
    let rows: Vec<Row> = (0..6).map(|i| Row { example: i, expert: Some(i % 2), weight: 1.0 }).collect();
    let cfg = TrainConfig { epochs: 3, batch_size: 2, learning_rate: 1e-2, ..TrainConfig::default() };
    // Decoder-only adapters: the encoder pass is shared and cached (the fast path).
    let lcfg = LoraConfig { dropout: 0.1, target_modules: Targets::Regex(r".*decoder.*".into()), ..all_targets() };
    let fresh = || {
        let mut m = ck.model.clone();
        dev.seed(1);
        m.attach_lora(&lcfg, 2, &dev).unwrap();
        m
    };
    let read = |m: &whisper_moe::whisper::Whisper| -> Vec<f32> {
        m.loras().iter().flat_map(|(_, l)| l.b.val().into_data().try_into_vec_as::<f32>().unwrap()).collect()
    };
    let run = |dir: &std::path::Path, fail_at: Option<(usize, usize)>| {
        let mut task = common::Interrupt::new(AdapterTask::new(&ck, &ex, &rows, 2, &cfg, None), fail_at);
        let t = train(fresh(), &mut task, &cfg.loop_config(), dir, "fp");
        (t.map(|t| t.model), task)
    };
    let (whole, whole_task) = run(&tmp("ckpt-whole"), None);
    let whole = whole.unwrap();

    // Killed in the middle of epoch 3 (index 2), after the checkpoint of epoch 2.
    let dir = tmp("ckpt-stop");
    let (stopped, _) = run(&dir, Some((2, 1)));
    assert!(stopped.is_err());
    let (resumed, resumed_task) = run(&dir, None);
    let resumed = resumed.unwrap();
    // A resume, not a restart: no batch of the first two epochs runs again.
    assert!(resumed_task.losses.iter().all(|&(e, _)| e == 2), "{:?}", resumed_task.losses);
    assert_eq!(resumed_task.epochs_ended, [3]);
    // The per-epoch records the outputs are made from are those of the uninterrupted run.
    let records = |t: &common::Interrupt<AdapterTask>| serde_json::to_string(&t.inner.records).unwrap();
    assert_eq!(records(&resumed_task), records(&whole_task));
    let (a, b) = (read(&whole), read(&resumed));
    let diff = common::max_abs_diff(&a, &b);
    eprintln!("resumed vs uninterrupted: max |diff| = {diff:.2e}");
    assert!(a.iter().any(|v| v.abs() > 1e-4), "training must move B away from zero");
    assert!(diff == 0.0, "resumed adapters differ from the uninterrupted run: max |diff| {diff}");
}

#[test]
fn row_loss_matches_transformers_loss() {
    let Some(shared) = common::shared("row_loss_matches_transformers_loss") else { return };
    let dev = Device::flex();
    let ck = Checkpoint::load_dir(&shared.join("models/whisper-tiny.en"), &dev).unwrap();
    for fx in common::fixtures(&shared) {
        let audio = whisper_moe::audio::load_16k(&fx.wav).unwrap().samples;
        let mut seq: Vec<u32> = fx.i64s("decoder_input_ids").1.iter().map(|&t| t as u32).collect();
        seq.push(ck.tokenizer.eot);
        let labels: Vec<u32> = fx.i64s("labels").1.iter().map(|&t| t as u32).collect();
        assert_eq!(&seq[1..], labels.as_slice(), "labels are the inputs shifted left + EOT");
        let enc = ck.model.encoder.forward(ck.mel_batch(&[ck.features(&audio)]), None);
        let loss: f32 = sequence_losses(&ck.model, enc, &[&seq], None).into_scalar();
        let want = fx.f32s("loss").1[0];
        eprintln!("{}: loss {loss} vs transformers {want}", fx.id);
        assert!((loss - want).abs() < 1e-3, "{}: {loss} vs {want}", fx.id);
    }
}

#[test]
fn rows_sharing_an_utterance_equal_separate_rows() {
    use whisper_moe::train::{EncoderCache, utterance_losses};
    let dev = Device::flex();
    dev.seed(3);
    let ck = tiny("shared", &dev);
    let mut m = ck.model.clone();
    // Decoder-only adapters, cross-attention v_proj included: the shared path computes the base
    // projections once per utterance and the adapters per row.
    let cfg = LoraConfig {
        dropout: 0.0,
        target_modules: Targets::Regex(r".*decoder.*\.(q_proj|v_proj|k_proj|fc1)".into()),
        ..all_targets()
    };
    m.attach_lora(&cfg, 3, &dev).unwrap();
    randomize_b(&mut m, &dev);
    let ex = examples(&ck);
    let rows = [(0, Some(0)), (0, Some(1)), (1, Some(2)), (1, None), (0, Some(2))];
    let shared: Vec<f32> = utterance_losses(&ck, &m, &mut EncoderCache::new(10), &ex, &rows, false, false)
        .into_data()
        .try_into_vec_as()
        .unwrap();
    for (i, &(u, e)) in rows.iter().enumerate() {
        let enc = m.encoder.forward(ck.mel_batch(&[ck.features(&ex[u].audio)]), None);
        let route = Route::per_row(&[e], &dev);
        let single: f32 = sequence_losses(&m, enc, &[&ex[u].tokens], Some(&route)).into_scalar();
        assert!((shared[i] - single).abs() <= 1e-5, "row {i}: {} vs {single}", shared[i]);
    }
    assert!((shared[0] - shared[1]).abs() > 1e-4, "experts must differ");
}

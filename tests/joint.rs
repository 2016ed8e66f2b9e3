//! Joint training with a tiny random Whisper: the soft phase's loss is sum_e p_e L_e of
//! separate single-expert passes and every expert receives a gradient from it;
//! straight-through hard weights; the rescue adds the most probable utterances with weight
//! q_e; the logged temperatures follow the schedule; a run stopped in the middle of the top-k
//! soft phase resumes (not restarts) to the same mixture and logs.

mod common;

use burn::prelude::*;
use whisper_moe::lora::{LoraConfig, Route, Targets, trainable};
use whisper_moe::routing::curriculum::{route, row_weights};
use whisper_moe::routing::gate::{Gate, GateConfig};
use whisper_moe::routing::joint::{JointData, JointModel, batch_loss};
use whisper_moe::routing::schedule::{Phase, Schedule, ScheduleUnit, temperature};
use whisper_moe::stage::joint::{JointParams, JointTask};
use whisper_moe::train::{EncoderCache, Example, GradMap, sequence_losses, train};
use whisper_moe::whisper::{Checkpoint, Task, testing};

const E: usize = 3;
const DIM: usize = 8;

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("wm-joint-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn setup(name: &str, device: &Device) -> (Checkpoint, JointModel, JointData) {
    setup_with(name, device, r".*decoder.*\.(q_proj|v_proj)")
}

fn setup_with(name: &str, device: &Device, targets: &str) -> (Checkpoint, JointModel, JointData) {
    let dir = tmp(name);
    testing::write_checkpoint(&dir, 5, &[], &[]).unwrap();
    let ck = Checkpoint::load_dir(&dir, device).unwrap();
    device.seed(2);
    let mut whisper = ck.model.clone();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: Targets::Regex(targets.into()),
        use_rslora: false,
    };
    whisper.attach_lora(&cfg, E, device).unwrap();
    for (name, proj) in whisper.projs_mut() {
        if let Some(l) = proj.lora.as_mut() {
            l.b = trainable(
                &format!("{name}.lora_B"),
                Tensor::<3>::random(l.b.dims(), burn::tensor::Distribution::Uniform(-0.3, 0.3), device),
            );
        }
    }
    let gate = Gate::new(
        &GateConfig { input_dim: DIM, hidden: vec![6], experts: E, activation: "gelu".into(), dropout: 0.0 },
        vec![0.0; DIM],
        vec![1.0; DIM],
        device,
    );
    let words = ["the cat sat", "a dog ran to the house", "big red sun", "we go", "see the sky", "one two"];
    let examples: Vec<Example> = (0..12)
        .map(|i| {
            let mut tokens = ck.prompt(None, Task::Transcribe).unwrap();
            tokens.extend(ck.tokenizer.encode(words[i % words.len()]).unwrap());
            tokens.push(ck.tokenizer.eot);
            Example {
                id: format!("u{i}"),
                audio: (0..12_000).map(|j| ((j * (i + 3)) as f32 * 0.011).sin() * 0.3).collect(),
                tokens,
                text: words[i % words.len()].into(),
                ..Default::default()
            }
        })
        .collect();
    let embeddings: Vec<f32> = (0..12 * DIM).map(|i| ((i * 7919) % 97) as f32 / 48.0 - 1.0).collect();
    let data = JointData {
        examples,
        embeddings,
        dim: DIM,
        train: (0..8).collect(),
        val: (8..12).map(|i| (i, Some(i % E))).collect(),
    };
    (ck, JointModel { whisper, gate, noise: None }, data)
}

#[test]
fn soft_phase_loss_is_the_probability_weighted_sum_of_single_expert_passes() {
    let dev = Device::flex();
    let (ck, m, d) = setup("soft", &dev);
    let mut p = JointParams::default();
    p.routing.load_balance_coef = 0.0;
    let batch = [0usize, 3, 5, 6];
    let temp = 1.7;
    let bl =
        batch_loss(&ck, &m, &mut EncoderCache::new(16), &d, &batch, Phase::Soft, temp, 0.0, &p.routing, false, false)
            .unwrap();
    // Reference: p = softmax(gate / T), and for every utterance and expert a separate pass.
    let emb: Vec<f32> = batch.iter().flat_map(|&i| d.embeddings[i * DIM..(i + 1) * DIM].to_vec()).collect();
    let z = m.gate.forward(Tensor::from_data(TensorData::new(emb, [batch.len(), DIM]), &dev), false);
    let probs: Vec<f32> = burn::tensor::activation::softmax(z / temp, 1).into_data().try_into_vec_as().unwrap();
    let mut want = 0.0f64;
    for (j, &i) in batch.iter().enumerate() {
        let enc = m.whisper.encoder.forward(ck.mel_batch(&[ck.features(&d.examples[i].audio)]), None);
        for e in 0..E {
            let l: f32 =
                sequence_losses(&m.whisper, enc.clone(), &[&d.examples[i].tokens], Some(&Route::all(e, 1, &dev)))
                    .into_scalar();
            want += probs[j * E + e] as f64 * l as f64 / batch.len() as f64;
        }
    }
    eprintln!("soft loss {} vs sum_e p_e L_e {want}", bl.main);
    assert!((bl.main - want).abs() <= 1e-5, "{} vs {want}", bl.main);
}

#[test]
fn topk_hard_weights_are_exactly_hard_with_the_soft_gradient() {
    let dev = Device::flex().autodiff();
    let z0: Vec<f32> = vec![0.3, -1.2, 2.0, 0.7, 0.1, 0.9, -0.4, 1.5, -2.0, 0.2, 0.05, 1.1];
    let costs: Vec<f32> = (0..8).map(|i| 0.5 + i as f32 * 0.37).collect();
    let run = |phase: Phase| {
        let z = Tensor::<2>::from_data(TensorData::new(z0.clone(), [3, 4]), &dev).require_grad();
        let p = burn::tensor::activation::softmax(z.clone() / 0.8, 1);
        let pv: Vec<f32> = p.clone().into_data().try_into_vec_as().unwrap();
        let r = route(&pv, 4, phase, 2, 0.0, 1e-4);
        let w = row_weights(p, &r, phase, 2);
        let c = Tensor::<1>::from_data(TensorData::new(costs[..r.rows.len()].to_vec(), [r.rows.len()]), &dev);
        let grads = (w.clone() * c).sum().backward();
        let wv: Vec<f32> = w.into_data().try_into_vec_as().unwrap();
        let g: Vec<f32> = z.grad(&grads).unwrap().into_data().try_into_vec_as().unwrap();
        (wv, g)
    };
    let (hard_w, hard_g) = run(Phase::TopkHard);
    let (soft_w, soft_g) = run(Phase::TopkSoft);
    assert!(hard_w.iter().all(|&w| w == 0.5), "forward weights must be exactly 1/k: {hard_w:?}");
    assert!(soft_w.iter().any(|&w| (w - 0.5).abs() > 1e-3), "the soft weights differ from 1/k");
    assert!(hard_g.iter().any(|&g| g.abs() > 1e-4), "the gate must receive a gradient");
    assert!(common::max_abs_diff(&hard_g, &soft_g) < 1e-7, "{hard_g:?} vs {soft_g:?}");
}

#[test]
fn every_expert_receives_a_gradient_in_the_soft_phase() {
    // The source guide switched adapters (set_adapter) before each expert's pass and called
    // backward once: every expert but the last one stayed frozen.
    let dev = Device::flex().autodiff();
    let (ck, m, d) = setup("grads", &dev);
    let p = JointParams::default();
    let bl = batch_loss(
        &ck,
        &m,
        &mut EncoderCache::new(16),
        &d,
        &[0, 1, 2, 3],
        Phase::Soft,
        1.0,
        0.0,
        &p.routing,
        true,
        false,
    )
    .unwrap();
    let grads = GradMap::of(&m, &bl.total.backward());
    let mut seen = 0;
    for (name, g) in &grads.0 {
        if !(name.ends_with(".lora.a") || name.ends_with(".lora.b")) {
            continue;
        }
        let [e, rest] = [E, g.dims()[0] / E];
        let v: Vec<f32> = g.clone().into_data().try_into_vec_as().unwrap();
        for x in 0..e {
            let norm: f32 = v[x * rest..(x + 1) * rest].iter().map(|g| g * g).sum::<f32>().sqrt();
            assert!(norm > 0.0, "{name}: expert {x} received no gradient");
        }
        seen += 1;
    }
    assert!(seen >= 4, "the A and B of at least two adapted layers: {:?}", grads.0.keys().collect::<Vec<_>>());
    assert!(grads.0.keys().any(|k| k.starts_with("gate.")), "the gate receives a gradient too");
}

#[test]
fn the_rescue_adds_the_most_probable_utterances_with_weight_q() {
    let dev = Device::flex().autodiff();
    // 4 utterances, 3 experts, top-1: nobody chooses expert 2; with a floor of 0.5 (2 of 4)
    // the two utterances with the highest p_2 among those not routed to it are added.
    let p0: Vec<f32> = vec![
        0.70, 0.20, 0.10, //
        0.60, 0.15, 0.25, //
        0.20, 0.50, 0.30, //
        0.10, 0.70, 0.20,
    ];
    let p = Tensor::<2>::from_data(TensorData::new(p0.clone(), [4, 3]), &dev);
    let r = route(&p0, 3, Phase::TopkSoft, 1, 0.5, 1e-4);
    assert_eq!(r.rescued, 2);
    assert_eq!(r.assigned, vec![vec![0], vec![0, 2], vec![1, 2], vec![1]]);
    let w: Vec<f32> = row_weights(p, &r, Phase::TopkSoft, 1).into_data().try_into_vec_as().unwrap();
    // Rows in order: (0,0) (1,0) (1,2) (2,1) (2,2) (3,1); q_e = p_e / sum over the top-k (1).
    let want = [1.0, 1.0, 0.25 / 0.60, 1.0, 0.30 / 0.50, 1.0];
    assert_eq!(r.rows, vec![(0, 0), (1, 0), (1, 2), (2, 1), (2, 2), (3, 1)]);
    for (g, w) in w.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{w:?} vs {want:?}");
    }
}

fn params() -> JointParams {
    let mut p = JointParams::default();
    p.train.epochs = 4;
    p.train.batch_size = 4;
    p.train.learning_rate = 5e-3;
    p.routing.soft_routing_epochs = 1;
    p.routing.topk_routing_epochs = 3;
    p.routing.top_k_experts = 1;
    p.routing.min_expert_usage_fraction = 0.25;
    p.routing.noise.kind = whisper_moe::routing::curriculum::NoiseKind::Gaussian;
    p.routing.noise.std = 0.5;
    p.eval_every_n_epochs = 2;
    p.eval.max_new_tokens = 6;
    p
}

fn values(m: &JointModel) -> Vec<f32> {
    let dir = tmp("values");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("t.safetensors");
    whisper_moe::train::save_trainables(m, &f).unwrap();
    let bytes = std::fs::read(&f).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().iter().map(|s| s.to_string()).collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| {
            st.tensor(n)
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect::<Vec<f32>>()
        })
        .collect()
}

#[test]
fn the_temperature_follows_the_schedule_per_epoch_and_per_step() {
    let dev = Device::flex().autodiff();
    let (ck, m, d) = setup("temperature", &dev);
    for unit in [ScheduleUnit::Epoch, ScheduleUnit::Step] {
        for schedule in [Schedule::Linear, Schedule::Cosine] {
            let mut p = params();
            p.routing.temperature_unit = unit;
            p.routing.temperature_schedule = schedule;
            p.train.epochs = 3;
            p.eval_every_n_epochs = 0;
            let mut task = JointTask::new(&ck, &d, &p);
            train(m.clone(), &mut task, &p.train.loop_config(), &tmp("ckpt-temp"), &format!("{unit:?}{schedule:?}"))
                .unwrap();
            let (t0, t1, n) = (2.0, 0.5, p.routing.topk_routing_epochs as f64);
            let batches = d.train.len().div_ceil(p.train.batch_size) as f64;
            let mut steps = 0;
            for l in task.state.logs.iter().filter(|l| l.kind == "step") {
                let epoch = (l.epoch - 1) as f64;
                let within = (steps % batches as usize) as f64;
                let progress = match unit {
                    ScheduleUnit::Epoch => (epoch / n).min(1.0),
                    ScheduleUnit::Step => ((epoch + within / batches) / n).min(1.0),
                };
                let want = temperature(schedule, t0, t1, progress);
                assert!(
                    (l.temperature - want).abs() < 1e-12,
                    "{unit:?} {schedule:?} step {steps}: {} vs {want}",
                    l.temperature
                );
                steps += 1;
            }
            assert_eq!(steps, 3 * batches as usize);
            // The formula by hand at the ends: T(0) = 2, linear T(1/3 of the way) = 1.5.
            let first = task.state.logs.iter().find(|l| l.kind == "step").unwrap();
            assert!((first.temperature - 2.0).abs() < 1e-12);
            if unit == ScheduleUnit::Epoch && schedule == Schedule::Linear {
                let e2 = task.state.logs.iter().find(|l| l.kind == "epoch" && l.epoch == 2).unwrap();
                assert!((e2.temperature - 1.5).abs() < 1e-12, "{}", e2.temperature);
            }
        }
    }
}

#[test]
fn the_curriculum_runs_and_a_stopped_run_resumes_to_the_same_mixture() {
    let dev = Device::flex().autodiff();
    let (ck, m, d) = setup("resume", &dev);
    let p = params();
    let cfg = p.train.loop_config();
    let mut whole_task = common::Interrupt::new(JointTask::new(&ck, &d, &p), None);
    let whole = train(m.clone(), &mut whole_task, &cfg, &tmp("ckpt-a"), "fp").unwrap().model;
    let logs = &whole_task.inner.state.logs;
    // The log shows the phases and the temperature falling; the rescue floor holds.
    let epochs: Vec<_> = logs.iter().filter(|l| l.kind == "epoch").collect();
    let phases: Vec<&str> = epochs.iter().map(|l| l.phase.as_str()).collect();
    assert_eq!(phases, ["soft", "topk_soft", "topk_soft", "topk_hard"]);
    assert!(
        epochs.windows(2).all(|w| w[1].temperature <= w[0].temperature)
            && epochs[3].temperature < epochs[0].temperature
    );
    for l in logs.iter().filter(|l| l.kind == "step" && l.phase != "soft") {
        assert!(l.stats.min_usage >= 0.25, "step {}: an expert has {} of the batch", l.step, l.stats.min_usage);
    }
    assert!(epochs[1].val_wer.is_some() && epochs[3].val_wer.is_some());

    // Stop in the middle of the top-k soft phase (epoch index 1, second batch), then resume.
    let dir = tmp("ckpt-b");
    let mut stopped = common::Interrupt::new(JointTask::new(&ck, &d, &p), Some((1, 1)));
    assert!(train(m.clone(), &mut stopped, &cfg, &dir, "fp").is_err());
    let mut resumed_task = common::Interrupt::new(JointTask::new(&ck, &d, &p), None);
    let resumed = train(m, &mut resumed_task, &cfg, &dir, "fp").unwrap().model;
    // A resume, not a restart: the first epoch is not trained or logged again.
    assert!(resumed_task.losses.iter().all(|&(e, _)| e >= 1), "{:?}", resumed_task.losses);
    assert_eq!(resumed_task.epochs_ended, [2, 3, 4]);
    let (a, b) = (values(&whole), values(&resumed));
    let diff = common::max_abs_diff(&a, &b);
    eprintln!("resumed vs uninterrupted mixture: max |diff| = {diff:.2e} over {} values", a.len());
    assert!(diff == 0.0, "max |diff| {diff}");
    // Byte-identical logs and val routing (what the stage writes).
    let json = |t: &common::Interrupt<JointTask>| serde_json::to_string(&t.inner.state).unwrap();
    assert_eq!(json(&resumed_task), json(&whole_task));
}

/// Encoder adapters on the last encoder layer and the decoder (the demo's targets).
const ENC_DEC: &str = r".*(encoder\.layers\.1|decoder).*\.(q_proj|v_proj)";

#[test]
fn frozen_encoder_adapters_give_the_same_loss_and_no_encoder_gradient() {
    let dev = Device::flex().autodiff();
    let (ck, m, d) = setup_with("frozen", &dev, ENC_DEC);
    assert_eq!(m.whisper.first_adapted_encoder_layer(), Some(1));
    let p = JointParams::default();
    let batch = [0usize, 3, 5, 6];
    let loss = |cache: &mut EncoderCache, train: bool| {
        batch_loss(&ck, &m, cache, &d, &batch, Phase::Soft, 1.3, 0.0, &p.routing, train, false).unwrap()
    };
    let plain = loss(&mut EncoderCache::new(64), false);
    let mut frozen_cache = EncoderCache::new(64).with_frozen_encoder_adapters(true);
    let frozen = loss(&mut frozen_cache, false);
    // Twice through the cache: the second pass reads the stored (expert, utterance) states.
    let again = loss(&mut frozen_cache, false);
    eprintln!(
        "soft loss: encoder adapters trained {} / frozen {} / frozen, cached {}",
        plain.main, frozen.main, again.main
    );
    assert!((plain.main - frozen.main).abs() <= 1e-5, "{} vs {}", plain.main, frozen.main);
    assert_eq!(frozen.main, again.main);

    let grads = GradMap::of(&m, &loss(&mut frozen_cache, true).total.backward());
    let lora = |prefix: &str| {
        grads.0.keys().filter(|k| k.contains(prefix) && (k.ends_with(".lora.a") || k.ends_with(".lora.b"))).count()
    };
    assert_eq!(lora("encoder."), 0, "frozen encoder adapters got a gradient: {:?}", grads.0.keys().collect::<Vec<_>>());
    assert!(lora("decoder.") >= 4, "the decoder adapters train: {:?}", grads.0.keys().collect::<Vec<_>>());
    assert!(grads.0.keys().any(|k| k.starts_with("gate.")), "the gate trains");
    // Without freezing, the encoder adapters do receive a gradient.
    let grads = GradMap::of(&m, &loss(&mut EncoderCache::new(64), true).total.backward());
    assert!(grads.0.keys().any(|k| k.contains("encoder.") && k.ends_with(".lora.b")));
}

#[test]
fn joint_training_with_frozen_encoder_adapters_changes_only_the_rest() {
    let dev = Device::flex().autodiff();
    let (ck, m, d) = setup_with("frozen-train", &dev, ENC_DEC);
    let mut p = params();
    p.train.epochs = 2;
    p.routing.topk_routing_epochs = 1;
    p.freeze_encoder_adapters = true;
    let mut task = JointTask::new(&ck, &d, &p);
    let trained = train(m.clone(), &mut task, &p.train.loop_config(), &tmp("ckpt-frozen"), "fp").unwrap().model;
    let lora_values = |m: &JointModel, part: &str| -> Vec<f32> {
        m.whisper
            .loras()
            .iter()
            .filter(|(n, _)| n.contains(part))
            .flat_map(|(_, l)| {
                let a: Vec<f32> = l.a.val().into_data().try_into_vec_as().unwrap();
                let b: Vec<f32> = l.b.val().into_data().try_into_vec_as().unwrap();
                a.into_iter().chain(b)
            })
            .collect()
    };
    let (enc0, enc1) = (lora_values(&m, ".encoder."), lora_values(&trained, ".encoder."));
    let (dec0, dec1) = (lora_values(&m, ".decoder."), lora_values(&trained, ".decoder."));
    assert!(!enc0.is_empty() && !dec0.is_empty());
    assert_eq!(common::max_abs_diff(&enc0, &enc1), 0.0, "the encoder adapters must not change");
    assert!(common::max_abs_diff(&dec0, &dec1) > 1e-4, "the decoder adapters must train");
}

//! Which embedding (encoder layer x pooling) and which k: for each corpus, every layer's
//! hidden states are pooled both ways, clustered with `k: auto` (k-means, silhouette over
//! 2..=12, the cluster stage's own code), and scored against the corpus's `domain` column
//! (NMI, ARI), which the choice itself never sees. The encoder runs once per clip.
//!
//!   cargo bench --bench embedding_choice -- MODEL_DIR DATASET_DIR [DATASET_DIR ...]
//!
//! e.g. `-- artifacts/model data/demo data/demo8`. Prints one table per corpus, with the
//! configuration `auto` would pick (the largest silhouette) marked. `MAX_LAYER=n` stops at
//! layer n.

use std::path::Path;

use rayon::prelude::*;
use whisper_moe::artifacts::Embeddings;
use whisper_moe::audio::mel::valid_encoder_frames;
use whisper_moe::cluster::{ClusterParams, K, cluster_embeddings};
use whisper_moe::dataset::{Columns, Dataset};
use whisper_moe::embedding::{Pooling, pool};
use whisper_moe::whisper::{Checkpoint, device};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let [model, datasets @ ..] = args.as_slice() else {
        eprintln!("usage: cargo bench --bench embedding_choice -- MODEL_DIR DATASET_DIR [DATASET_DIR ...]");
        std::process::exit(2);
    };
    let ck = Checkpoint::load(model, &device("cpu").unwrap()).unwrap();
    // MAX_LAYER=n stops at layer n (the deeper layers cost encoder time).
    let layers = std::env::var("MAX_LAYER").ok().and_then(|v| v.parse().ok()).unwrap_or(ck.config.encoder_layers);
    for data in datasets {
        let ds = Dataset::open(Path::new(data), &Columns::default()).unwrap();
        let utts: Vec<_> = ds.iter(0..ds.len()).collect::<anyhow::Result<_>>().unwrap();
        let dcol = ds.extra_columns().iter().position(|c| c == "domain").expect("a `domain` column");
        let start = std::time::Instant::now();
        // pooled[(layer, pooling)] = rows x dim
        let poolings = [Pooling::MeanValid, Pooling::MeanStdValid];
        let mut pooled: Vec<Vec<f32>> = vec![Vec::new(); (layers + 1) * poolings.len()];
        for chunk in utts.chunks(8) {
            let prepared: Vec<(Vec<f32>, usize)> = chunk
                .par_iter()
                .map(|u| {
                    let d = u.decode().unwrap();
                    (ck.features(&d.samples), d.samples.len())
                })
                .collect();
            let feats: Vec<Vec<f32>> = prepared.iter().map(|p| p.0.clone()).collect();
            let valid: Vec<usize> = prepared.iter().map(|p| valid_encoder_frames(p.1)).collect();
            let enc = &ck.model.encoder;
            let mut x = enc.forward_upto(ck.mel_batch(&feats), 0, None);
            for l in 1..=layers {
                x = enc.layers[l - 1].forward(x, None);
                let states = if l == ck.config.encoder_layers { enc.layer_norm.forward(x.clone()) } else { x.clone() };
                for (j, &p) in poolings.iter().enumerate() {
                    let v: Vec<f32> = pool(states.clone(), &valid, p).into_data().try_into_vec_as().unwrap();
                    pooled[l * poolings.len() + j].extend(v);
                }
            }
        }
        println!(
            "\n{data}: {} clips, {} domains; encoder pass {:.0} s",
            utts.len(),
            {
                let mut d: Vec<_> = utts.iter().map(|u| u.extra[dcol].clone()).collect();
                d.sort();
                d.dedup();
                d.len()
            },
            start.elapsed().as_secs_f64()
        );
        println!(
            "| layer | pooling | k chosen | silhouette | NMI | ARI | NMI at true k | k: silhouette/calinski_harabasz/davies_bouldin |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let true_k = {
            let mut d: Vec<_> = utts.iter().map(|u| u.extra[dcol].clone()).collect();
            d.sort();
            d.dedup();
            d.len()
        };
        let mut best: Option<(f64, String)> = None;
        for l in 1..=layers {
            for (j, p) in poolings.iter().enumerate() {
                let dim = p.dim(ck.config.d_model);
                let emb = Embeddings {
                    ids: utts.iter().map(|u| u.id.clone()).collect(),
                    audio_paths: utts.iter().map(|u| u.audio_path.clone()).collect(),
                    durations: vec![1.0; utts.len()],
                    transcriptions: vec![String::new(); utts.len()],
                    extra: vec![("domain".into(), utts.iter().map(|u| u.extra[dcol].clone()).collect())],
                    numbers: Vec::new(),
                    dim,
                    values: pooled[l * poolings.len() + j].clone(),
                };
                if let Some(dir) = std::env::var_os("DUMP_DIR") {
                    // Raw little-endian f32 rows and the domain labels, for exploring elsewhere.
                    let stem = format!("{}-l{l}-{}", Path::new(data).file_name().unwrap().to_string_lossy(), p.name());
                    let bytes: Vec<u8> = emb.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    std::fs::write(Path::new(&dir).join(format!("{stem}.f32")), bytes).unwrap();
                    let labels: Vec<String> = emb.extra[0].1.iter().map(|v| v.clone().unwrap_or_default()).collect();
                    std::fs::write(Path::new(&dir).join(format!("{stem}.labels")), labels.join("\n")).unwrap();
                }
                let params =
                    ClusterParams { label_column: Some("domain".into()), min_cluster_size: 0, ..Default::default() };
                let auto = cluster_embeddings(&emb, &params).unwrap().summary;
                let fixed =
                    cluster_embeddings(&emb, &ClusterParams { k: K::Fixed(true_k), ..params.clone() }).unwrap().summary;
                let sel = auto.k_selection.as_ref().unwrap();
                let s = auto.silhouette.unwrap_or(f64::NAN);
                let name = format!("layer {l} {}", p.name());
                if best.as_ref().is_none_or(|(b, _)| s > *b) {
                    best = Some((s, name.clone()));
                }
                let curve: Vec<String> = sel
                    .curve
                    .iter()
                    .map(|c| {
                        let v = |n: &str| c.scores.get(n).copied().unwrap_or(f64::NAN);
                        format!(
                            "{}:{:.3}/{:.0}/{:.2}",
                            c.k,
                            v("silhouette"),
                            v("calinski_harabasz"),
                            v("davies_bouldin")
                        )
                    })
                    .collect();
                println!(
                    "| {l} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
                    p.name(),
                    sel.chosen,
                    s,
                    auto.nmi.unwrap_or(f64::NAN),
                    auto.ari.unwrap_or(f64::NAN),
                    fixed.nmi.unwrap_or(f64::NAN),
                    curve.join(" ")
                );
            }
        }
        if let Some((s, name)) = best {
            println!("largest silhouette (label-free choice): {name} ({s:.3}); true k = {true_k}");
        }
    }
}

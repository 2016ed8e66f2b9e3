//! The artifacts stages exchange: an Arrow schema for each, written as Parquet datasets.
//! Artifact code knows nothing about burn; model code knows nothing about Parquet.

pub mod columns;
pub mod dataset;
pub mod grouping;
pub mod samples;
pub mod show;
pub mod table;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use columns::*;
pub use dataset::{
    CHECKPOINT_HASH, DatasetWriter, PARAMS_HASH, PRODUCER, Shard, read_dataset, read_metadata, standard_metadata,
    write_dataset,
};
pub use grouping::Grouping;

/// Read a dataset and convert it, naming the path in any error.
fn read_typed<T>(
    path: &Path,
    what: &str,
    f: impl FnOnce(&RecordBatch) -> Result<T>,
) -> Result<(T, BTreeMap<String, String>)> {
    let ds = read_dataset(path).with_context(|| format!("reading the {what} artifact {}", path.display()))?;
    let batch = ds.concat()?;
    let t = f(&batch).with_context(|| format!("{what} artifact {}", path.display()))?;
    Ok((t, ds.metadata))
}

/// One row per embedded utterance (stage embed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embeddings {
    pub ids: Vec<String>,
    pub audio_paths: Vec<String>,
    pub durations: Vec<f32>,
    pub transcriptions: Vec<String>,
    /// Metadata columns carried over from the dataset manifest (e.g. `domain`), and the
    /// `language` the embed stage detected.
    pub extra: Vec<(String, Vec<Option<String>>)>,
    /// Numeric metadata columns (Float32), after the text ones: the detected `language_prob`.
    pub numbers: Vec<(String, Vec<Option<f32>>)>,
    pub dim: usize,
    /// Row-major [rows, dim].
    pub values: Vec<f32>,
}

impl Embeddings {
    pub const FIXED: [&'static str; 5] = ["id", "audio_path", "duration", "transcription", "embedding"];

    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
    pub fn column(&self, name: &str) -> Option<&[Option<String>]> {
        self.extra.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// A numeric metadata column by name.
    pub fn number(&self, name: &str) -> Option<&[Option<f32>]> {
        self.numbers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// The `language` column by utterance id (what the embed stage detected, or the dataset's
    /// own column carried over); empty without one.
    pub fn languages(&self) -> std::collections::HashMap<String, String> {
        let Some(col) = self.column("language") else { return Default::default() };
        self.ids.iter().zip(col).filter_map(|(id, l)| Some((id.clone(), l.clone()?))).collect()
    }

    /// The schema with text metadata columns `extra` and Float32 ones `numbers`.
    pub fn schema(dim: usize, extra: &[String], numbers: &[String]) -> SchemaRef {
        let mut fields = vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("audio_path", DataType::Utf8, false),
            Field::new("duration", DataType::Float32, false),
            Field::new("transcription", DataType::Utf8, false),
        ];
        fields.extend(extra.iter().map(|n| Field::new(n, DataType::Utf8, true)));
        fields.extend(numbers.iter().map(|n| Field::new(n, DataType::Float32, true)));
        fields.push(Field::new("embedding", vector_type(dim), false));
        Arc::new(Schema::new(fields))
    }

    pub fn to_batch(&self) -> Result<RecordBatch> {
        let names: Vec<String> = self.extra.iter().map(|(n, _)| n.clone()).collect();
        let numbers: Vec<String> = self.numbers.iter().map(|(n, _)| n.clone()).collect();
        let mut cols: Vec<ArrayRef> = vec![
            string_array(&self.ids),
            string_array(&self.audio_paths),
            f32_array(&self.durations),
            string_array(&self.transcriptions),
        ];
        cols.extend(self.extra.iter().map(|(_, v)| opt_string_array(v)));
        cols.extend(self.numbers.iter().map(|(_, v)| opt_f32_array(v)));
        cols.push(vector_array(self.values.clone(), self.dim)?);
        Ok(RecordBatch::try_new(Self::schema(self.dim, &names, &numbers), cols)?)
    }

    pub fn from_batch(b: &RecordBatch) -> Result<Embeddings> {
        let (values, dim) = vectors(b, "embedding", None)?;
        let extra = b
            .schema()
            .fields()
            .iter()
            .filter(|f| !Self::FIXED.contains(&f.name().as_str()))
            .filter(|f| matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View))
            .map(|f| Ok((f.name().clone(), opt_strings(b, f.name())?)))
            .collect::<Result<_>>()?;
        let numbers = b
            .schema()
            .fields()
            .iter()
            .filter(|f| !Self::FIXED.contains(&f.name().as_str()))
            .filter(|f| matches!(f.data_type(), DataType::Float32 | DataType::Float64))
            .map(|f| Ok((f.name().clone(), opt_f32s(b, f.name())?)))
            .collect::<Result<_>>()?;
        Ok(Embeddings {
            ids: strings(b, "id")?,
            audio_paths: strings(b, "audio_path")?,
            durations: f32s(b, "duration")?,
            transcriptions: strings(b, "transcription")?,
            extra,
            numbers,
            dim,
            values,
        })
    }

    pub fn read(path: &Path) -> Result<(Embeddings, BTreeMap<String, String>)> {
        read_typed(path, "embeddings", Embeddings::from_batch)
    }
}

/// Inputs the embed stage could not use, with the reason.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rejected {
    pub ids: Vec<String>,
    pub audio_paths: Vec<String>,
    /// A short machine-friendly reason: missing, unreadable, empty, silent, too_long,
    /// no_transcript, no_words (punctuation only), bad_text (not UTF-8).
    pub reasons: Vec<String>,
    pub details: Vec<String>,
}

impl Rejected {
    pub fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("audio_path", DataType::Utf8, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("detail", DataType::Utf8, false),
        ]))
    }
    pub fn push(&mut self, id: &str, path: &str, reason: &str, detail: &str) {
        self.ids.push(id.into());
        self.audio_paths.push(path.into());
        self.reasons.push(reason.into());
        self.details.push(detail.into());
    }
    pub fn to_batch(&self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            Self::schema(),
            vec![
                string_array(&self.ids),
                string_array(&self.audio_paths),
                string_array(&self.reasons),
                string_array(&self.details),
            ],
        )?)
    }
    pub fn from_batch(b: &RecordBatch) -> Result<Rejected> {
        Ok(Rejected {
            ids: strings(b, "id")?,
            audio_paths: strings(b, "audio_path")?,
            reasons: strings(b, "reason")?,
            details: strings(b, "detail")?,
        })
    }
    pub fn read(path: &Path) -> Result<(Rejected, BTreeMap<String, String>)> {
        read_typed(path, "rejected", Rejected::from_batch)
    }
}

/// Cluster assignment per utterance (stage cluster).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Clusters {
    pub ids: Vec<String>,
    /// The expert group; -1 only for dropped noise points (noise: drop).
    pub cluster: Vec<i32>,
    pub k: usize,
    /// Row-major [rows, k] membership probabilities.
    pub probs: Vec<f32>,
    pub is_noise: Vec<bool>,
}

impl Clusters {
    pub fn schema(k: usize) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("cluster", DataType::Int32, false),
            Field::new("probs", vector_type(k), false),
            Field::new("is_noise", DataType::Boolean, false),
        ]))
    }
    pub fn prob_row(&self, i: usize) -> &[f32] {
        &self.probs[i * self.k..(i + 1) * self.k]
    }
    pub fn to_batch(&self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            Self::schema(self.k),
            vec![
                string_array(&self.ids),
                i32_array(&self.cluster),
                vector_array(self.probs.clone(), self.k)?,
                bool_array(&self.is_noise),
            ],
        )?)
    }
    pub fn from_batch(b: &RecordBatch) -> Result<Clusters> {
        let (probs, k) = vectors(b, "probs", None)?;
        let cluster: Vec<i32> = i64s(b, "cluster")?.into_iter().map(|v| v as i32).collect();
        if let Some(bad) = cluster.iter().position(|&c| c < -1 || (k > 0 && c >= k as i32)) {
            bail!("row {bad}: cluster {} is outside 0..{k}", cluster[bad]);
        }
        Ok(Clusters { ids: strings(b, "id")?, cluster, k, probs, is_noise: bools(b, "is_noise")? })
    }
    pub fn read(path: &Path) -> Result<(Clusters, BTreeMap<String, String>)> {
        read_typed(path, "clusters", Clusters::from_batch)
    }
}

/// The split names, in the order they are drawn.
pub const SPLITS: [&str; 4] = ["test", "val", "expert_pretrain", "joint_train"];

/// Which split each utterance belongs to (stage cluster).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Splits {
    pub ids: Vec<String>,
    pub split: Vec<String>,
}

impl Splits {
    pub fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("split", DataType::Utf8, false)]))
    }
    pub fn to_batch(&self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(Self::schema(), vec![string_array(&self.ids), string_array(&self.split)])?)
    }
    pub fn from_batch(b: &RecordBatch) -> Result<Splits> {
        let s = Splits { ids: strings(b, "id")?, split: strings(b, "split")? };
        if let Some(i) = s.split.iter().position(|v| !SPLITS.contains(&v.as_str())) {
            bail!("row {i} (id {}): unknown split `{}` (expected one of {})", s.ids[i], s.split[i], SPLITS.join(", "));
        }
        Ok(s)
    }
    pub fn read(path: &Path) -> Result<(Splits, BTreeMap<String, String>)> {
        read_typed(path, "splits", Splits::from_batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("wm-art-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn sample() -> Embeddings {
        Embeddings {
            ids: vec!["a".into(), "b".into()],
            audio_paths: vec!["a.flac".into(), "b.flac".into()],
            durations: vec![1.5, 2.0],
            transcriptions: vec!["hello".into(), "world".into()],
            extra: vec![("domain".into(), vec![Some("x".into()), None])],
            numbers: vec![("language_prob".into(), vec![Some(0.75), None])],
            dim: 3,
            values: vec![1.0, 2.0, 3.0, -1.0, 0.5, 0.25],
        }
    }

    #[test]
    fn embeddings_round_trip_with_metadata() {
        let dir = tmp("emb");
        let e = sample();
        let mut meta = standard_metadata("embed", Some("abc"));
        meta.insert("pooling".into(), "mean_valid".into());
        write_dataset(&dir, &[e.to_batch().unwrap()], &meta).unwrap();
        let (back, m) = Embeddings::read(&dir).unwrap();
        assert_eq!(back, e);
        assert_eq!(m.get(CHECKPOINT_HASH).map(String::as_str), Some("abc"));
        assert_eq!(m.get("pooling").map(String::as_str), Some("mean_valid"));
        assert_eq!(m.get(PRODUCER).map(String::as_str), Some("embed"));
    }

    #[test]
    fn schema_errors_name_the_column() {
        let dir = tmp("bad");
        let batch = Splits { ids: vec!["a".into()], split: vec!["test".into()] }.to_batch().unwrap();
        write_dataset(&dir, &[batch], &BTreeMap::new()).unwrap();
        let err = format!("{:#}", Embeddings::read(&dir).unwrap_err());
        assert!(err.contains("`embedding`") && err.contains("missing"), "{err}");
        assert!(err.contains(&dir.display().to_string()), "{err}");

        // A mistyped column: `cluster` as strings.
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("cluster", DataType::Utf8, false),
            Field::new("probs", vector_type(1), false),
            Field::new("is_noise", DataType::Boolean, false),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![string_array(&["a"]), string_array(&["0"]), vector_array(vec![1.0], 1).unwrap(), bool_array(&[false])],
        )
        .unwrap();
        write_dataset(&dir, &[b], &BTreeMap::new()).unwrap();
        let err = format!("{:#}", Clusters::read(&dir).unwrap_err());
        assert!(err.contains("`cluster`") && err.contains("Utf8"), "{err}");
    }

    #[test]
    fn reads_list_vectors_and_large_strings_written_by_other_tools() {
        use arrow::array::{Array, LargeStringArray, ListArray};
        use arrow::datatypes::Float32Type;
        let list = ListArray::from_iter_primitive::<Float32Type, _, _>(vec![
            Some(vec![Some(1.0), Some(2.0)]),
            Some(vec![Some(3.0), Some(4.0)]),
        ]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::LargeUtf8, true),
            Field::new("split", DataType::LargeUtf8, true),
            Field::new("v", list.data_type().clone(), true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(LargeStringArray::from(vec!["a", "b"])),
                Arc::new(LargeStringArray::from(vec!["val", "test"])),
                Arc::new(list),
            ],
        )
        .unwrap();
        let s = Splits::from_batch(&b).unwrap();
        assert_eq!(s.split, vec!["val", "test"]);
        let (v, d) = vectors(&b, "v", Some(2)).unwrap();
        assert_eq!((v, d), (vec![1.0, 2.0, 3.0, 4.0], 2));
        assert!(vectors(&b, "v", Some(3)).is_err());
    }

    #[test]
    fn shards_cover_the_range_in_order() {
        for n in [0, 1, 7, 10, 101] {
            for count in 1..5 {
                let mut all = Vec::new();
                for index in 0..count {
                    all.extend(Shard { index, count }.range(n));
                }
                assert_eq!(all, (0..n).collect::<Vec<_>>());
            }
        }
        assert!("2/2".parse::<Shard>().is_err());
        assert_eq!("1/3".parse::<Shard>().unwrap(), Shard { index: 1, count: 3 });
    }

    #[test]
    fn sharded_parts_read_back_in_order() {
        let dir = tmp("shards");
        let e = sample();
        for (i, rows) in [(0usize, 0..1usize), (1, 1..2)] {
            let mut part = e.clone();
            part.ids = e.ids[rows.clone()].to_vec();
            part.audio_paths = e.audio_paths[rows.clone()].to_vec();
            part.durations = e.durations[rows.clone()].to_vec();
            part.transcriptions = e.transcriptions[rows.clone()].to_vec();
            part.extra = vec![("domain".into(), e.extra[0].1[rows.clone()].to_vec())];
            part.numbers = vec![("language_prob".into(), e.numbers[0].1[rows.clone()].to_vec())];
            part.values = e.values[rows.start * 3..rows.end * 3].to_vec();
            let mut w = DatasetWriter::create(
                &dir,
                Embeddings::schema(3, &["domain".into()], &["language_prob".into()]),
                &BTreeMap::new(),
                Some(Shard { index: i, count: 2 }),
            )
            .unwrap();
            w.write(&part.to_batch().unwrap()).unwrap();
            w.finish().unwrap();
        }
        assert_eq!(Embeddings::read(&dir).unwrap().0, e);
    }
}

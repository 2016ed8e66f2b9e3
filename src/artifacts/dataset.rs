//! Parquet datasets: a directory of `part-NNNNN.parquet` files with one schema, zstd
//! compressed, with key-value metadata (producer stage, params hash, checkpoint hash, ...).
//!
//! Writes are atomic: an unsharded dataset is written to a sibling temporary directory and
//! renamed into place; a shard writes `part-NNNNN.parquet.tmp` and renames it. Readers see only
//! `*.parquet`, so a crashed write never looks complete.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// Metadata keys every artifact carries.
pub const PRODUCER: &str = "producer";
pub const PARAMS_HASH: &str = "params_hash";
pub const CHECKPOINT_HASH: &str = "checkpoint_hash";

/// Which slice of a data-parallel stage this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("shard `{s}` is not i/N"))?;
        let index: usize = i.trim().parse().map_err(|_| format!("shard `{s}`: bad index"))?;
        let count: usize = n.trim().parse().map_err(|_| format!("shard `{s}`: bad count"))?;
        if count == 0 || index >= count {
            return Err(format!("shard `{s}`: need 0 <= i < N"));
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// The contiguous slice [start, end) of `n` items this shard owns; shards in order cover
    /// 0..n exactly, so concatenating their parts reproduces the unsharded order.
    pub fn range(&self, n: usize) -> std::ops::Range<usize> {
        (n * self.index / self.count)..(n * (self.index + 1) / self.count)
    }
}

/// Metadata common to every artifact: who produced it and from what.
pub fn standard_metadata(producer: &str, checkpoint_hash: Option<&str>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(PRODUCER.to_string(), producer.to_string());
    if let Ok(h) = std::env::var("PIPELINE_PARAMS_HASH") {
        m.insert(PARAMS_HASH.to_string(), h);
    }
    if let Some(h) = checkpoint_hash {
        m.insert(CHECKPOINT_HASH.to_string(), h.to_string());
    }
    m
}

/// Streams record batches into one part file of a dataset directory.
pub struct DatasetWriter {
    writer: Option<ArrowWriter<fs::File>>,
    part_tmp: PathBuf,
    part_final: PathBuf,
    /// For an unsharded write: (temporary directory, final directory).
    swap: Option<(PathBuf, PathBuf)>,
    rows: usize,
}

impl DatasetWriter {
    pub fn create(
        dir: &Path,
        schema: SchemaRef,
        metadata: &BTreeMap<String, String>,
        shard: Option<Shard>,
    ) -> Result<DatasetWriter> {
        let schema = Arc::new(Schema::new(schema.fields().clone()).with_metadata(metadata.clone()));
        let (write_dir, swap, name) = match shard {
            None => {
                let name = dir.file_name().context("dataset path has no name")?.to_string_lossy();
                let tmp = dir.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
                let _ = fs::remove_dir_all(&tmp);
                (tmp.clone(), Some((tmp, dir.to_path_buf())), "part-00000.parquet".to_string())
            }
            Some(s) => (dir.to_path_buf(), None, format!("part-{:05}.parquet", s.index)),
        };
        fs::create_dir_all(&write_dir).with_context(|| format!("cannot create {}", write_dir.display()))?;
        let part_final = write_dir.join(&name);
        let part_tmp = write_dir.join(format!("{name}.tmp"));
        let file = fs::File::create(&part_tmp).with_context(|| format!("cannot create {}", part_tmp.display()))?;
        let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?)).build();
        let mut writer = ArrowWriter::try_new(file, schema, Some(props))?;
        // Also as plain Parquet key-value metadata, which every reader shows (duckdb's
        // parquet_kv_metadata, pyarrow's FileMetaData.metadata), not only inside ARROW:schema.
        for (k, v) in metadata {
            writer.append_key_value_metadata(parquet::file::metadata::KeyValue::new(k.clone(), v.clone()));
        }
        Ok(DatasetWriter { writer: Some(writer), part_tmp, part_final, swap, rows: 0 })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows();
        self.writer.as_mut().expect("writer open").write(batch)?;
        Ok(())
    }

    /// Close the part and move it (or the whole dataset) into place. Returns the row count.
    pub fn finish(mut self) -> Result<usize> {
        self.writer.take().expect("writer open").close()?;
        fs::rename(&self.part_tmp, &self.part_final)?;
        if let Some((tmp, dir)) = self.swap.take() {
            if dir.exists() {
                let old = tmp.with_extension("old");
                let _ = fs::remove_dir_all(&old);
                fs::rename(&dir, &old)?;
                fs::rename(&tmp, &dir)?;
                fs::remove_dir_all(&old)?;
            } else {
                if let Some(parent) = dir.parent() {
                    fs::create_dir_all(parent)?;
                }
                fs::rename(&tmp, &dir)?;
            }
        }
        Ok(self.rows)
    }
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        // Abandoned (error path): leave nothing that looks complete.
        if self.writer.is_some() {
            let _ = fs::remove_file(&self.part_tmp);
            if let Some((tmp, _)) = &self.swap {
                let _ = fs::remove_dir_all(tmp);
            }
        }
    }
}

/// Write a whole dataset at once.
pub fn write_dataset(dir: &Path, batches: &[RecordBatch], metadata: &BTreeMap<String, String>) -> Result<usize> {
    let Some(first) = batches.first() else { bail!("no batches to write to {}", dir.display()) };
    let mut w = DatasetWriter::create(dir, first.schema(), metadata, None)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()
}

/// The part files of a dataset (a directory) or the file itself, in name order.
pub fn part_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        bail!("{} does not exist", path.display());
    }
    let mut parts: Vec<PathBuf> = fs::read_dir(path)
        .with_context(|| format!("cannot list {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    parts.sort();
    if parts.is_empty() {
        bail!("{} holds no .parquet part files", path.display());
    }
    Ok(parts)
}

/// A dataset read into memory.
pub struct Dataset {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Key-value metadata of the first part.
    pub metadata: BTreeMap<String, String>,
    pub parts: Vec<PathBuf>,
}

impl Dataset {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// All batches as one.
    pub fn concat(&self) -> Result<RecordBatch> {
        Ok(arrow::compute::concat_batches(&self.schema, &self.batches)?)
    }
}

/// Read a dataset directory (or a single Parquet file). All parts must share a schema.
pub fn read_dataset(path: &Path) -> Result<Dataset> {
    let parts = part_files(path)?;
    let mut batches = Vec::new();
    let mut schema: Option<SchemaRef> = None;
    let mut metadata = BTreeMap::new();
    for (i, part) in parts.iter().enumerate() {
        let file = fs::File::open(part).with_context(|| format!("cannot open {}", part.display()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("{} is not a Parquet file", part.display()))?;
        let part_schema = builder.schema().clone();
        if i == 0 {
            if let Some(kv) = builder.metadata().file_metadata().key_value_metadata() {
                for e in kv {
                    if e.key != "ARROW:schema" {
                        metadata.insert(e.key.clone(), e.value.clone().unwrap_or_default());
                    }
                }
            }
        }
        let plain = Arc::new(Schema::new(part_schema.fields().clone()));
        match &schema {
            None => schema = Some(plain.clone()),
            Some(s) if s.fields() != plain.fields() => {
                bail!("{}: its schema differs from {}", part.display(), parts[0].display())
            }
            _ => {}
        }
        for b in builder.build()? {
            let b = b?;
            // Batches carry the file's schema metadata; drop it so they concatenate cleanly.
            batches.push(RecordBatch::try_new(plain.clone(), b.columns().to_vec())?);
        }
    }
    Ok(Dataset { schema: schema.expect("at least one part"), batches, metadata, parts })
}

/// Read only the key-value metadata of a dataset (from its first part).
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let parts = part_files(path)?;
    let file = fs::File::open(&parts[0])?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let mut metadata = BTreeMap::new();
    if let Some(kv) = builder.metadata().file_metadata().key_value_metadata() {
        for e in kv {
            if e.key != "ARROW:schema" {
                metadata.insert(e.key.clone(), e.value.clone().unwrap_or_default());
            }
        }
    }
    Ok(metadata)
}

//! Speech datasets in the formats researchers have them in: an HF audiofolder
//! (`metadata.csv`), a NeMo-style JSONL manifest, or Parquet as exported by HF datasets (an
//! audio struct of bytes and path, plus a text column). Rows stream in order; audio is read
//! only when a row is reached, so memory is bounded by the batch, not the dataset.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use arrow::array::{Array, AsArray, RecordBatch, StructArray};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde::{Deserialize, Serialize};

/// Column names, when a dataset does not use the usual ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Columns {
    /// Utterance id column (default: `id` when present, else the relative audio path).
    pub id: Option<String>,
    /// Audio column: `file_name` (audiofolder), `audio_filepath` (NeMo), `audio` (Parquet).
    pub audio: Option<String>,
    /// Transcript column: the first of transcription, text, sentence.
    pub text: Option<String>,
}

/// Where a row's audio is.
#[derive(Debug, Clone)]
pub enum Audio {
    File(PathBuf),
    Bytes {
        bytes: Vec<u8>,
        extension: Option<String>,
    },
    /// The row names no audio.
    None,
}

#[derive(Debug, Clone)]
pub struct Utterance {
    /// 0-based row in the dataset.
    pub row: usize,
    pub id: String,
    /// The audio path as the dataset gives it (relative paths stay relative).
    pub audio_path: String,
    pub audio: Audio,
    pub text: Option<String>,
    /// Values of the extra columns, in `Dataset::extra_columns()` order.
    pub extra: Vec<Option<String>>,
    /// Why the row's text cannot be read (e.g. bytes that are not UTF-8): the row is rejected
    /// as `bad_text`, the others are kept.
    pub bad_text: Option<String>,
}

impl Utterance {
    /// "metadata.csv row 12 (id a/b.flac)", for error messages.
    pub fn describe(&self, ds: &Dataset) -> String {
        format!("{} {} {} (id {})", ds.path.display(), ds.kind.row_word(), ds.kind.row_number(self.row), self.id)
    }

    pub fn decode(&self) -> Result<crate::audio::Decoded, crate::audio::AudioError> {
        match &self.audio {
            Audio::File(p) => crate::audio::decode_file(p),
            Audio::Bytes { bytes, extension } => {
                crate::audio::decode_bytes(bytes.clone(), extension.as_deref(), &self.audio_path)
            }
            Audio::None => Err(crate::audio::AudioError::Missing(format!("row {} names no audio", self.row))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    AudioFolder,
    NemoJsonl,
    HfParquet,
}

impl Kind {
    fn row_word(&self) -> &'static str {
        match self {
            Kind::AudioFolder => "row",
            Kind::NemoJsonl => "line",
            Kind::HfParquet => "row",
        }
    }
    /// Human row numbers: CSV rows count the header as line 1; JSONL lines from 1.
    fn row_number(&self, row: usize) -> usize {
        match self {
            Kind::AudioFolder => row + 2,
            Kind::NemoJsonl => row + 1,
            Kind::HfParquet => row,
        }
    }
}

/// A dataset manifest with its rows (audio not yet read).
pub struct Dataset {
    pub path: PathBuf,
    pub kind: Kind,
    extra: Vec<String>,
    /// CSV and JSONL rows (small: no audio).
    rows: Vec<Utterance>,
    /// Parquet: files and total rows; read when iterated.
    parquet: Vec<PathBuf>,
    parquet_rows: usize,
    columns: Columns,
}

const TEXT_COLUMNS: [&str; 3] = ["transcription", "text", "sentence"];
/// Columns naming an utterance's language (audiofolder / HF Parquet / NeMo), in order of preference.
pub const LANGUAGE_COLUMNS: [&str; 3] = ["language", "locale", "lang"];

impl Dataset {
    /// Open `metadata.csv` (or a directory holding one), a `.jsonl`/`.json` manifest, or a
    /// `.parquet` file / directory of them.
    pub fn open(path: &Path, columns: &Columns) -> Result<Dataset> {
        if !path.exists() {
            bail!("dataset {} does not exist", path.display());
        }
        let path = if path.is_dir() { Self::manifest_in(path)? } else { path.to_path_buf() };
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_lowercase();
        if path.is_dir() || ext == "parquet" {
            return Self::open_parquet(&path, columns);
        }
        match ext.as_str() {
            "csv" => Self::open_csv(&path, columns),
            "jsonl" | "json" => Self::open_jsonl(&path, columns),
            _ => bail!(
                "{}: unknown dataset format (expected metadata.csv, a .jsonl manifest or .parquet)",
                path.display()
            ),
        }
    }

    /// The manifest a dataset directory holds: metadata.csv (audiofolder), else its one .jsonl
    /// or .json manifest; else the directory is read as Parquet.
    fn manifest_in(dir: &Path) -> Result<PathBuf> {
        if dir.join("metadata.csv").is_file() {
            return Ok(dir.join("metadata.csv"));
        }
        let mut jsonl: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("jsonl" | "json")))
            .collect();
        jsonl.sort();
        match jsonl.len() {
            0 => Ok(dir.to_path_buf()),
            1 => Ok(jsonl.remove(0)),
            _ => bail!(
                "{} holds several manifests ({}); name one with --dataset",
                dir.display(),
                jsonl.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    pub fn len(&self) -> usize {
        if self.kind == Kind::HfParquet { self.parquet_rows } else { self.rows.len() }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn extra_columns(&self) -> &[String] {
        &self.extra
    }

    /// Index in [`Utterance::extra`] of the per-utterance language column (`language`, `locale`
    /// or `lang`), if the dataset has one.
    pub fn language_index(&self) -> Option<usize> {
        LANGUAGE_COLUMNS.iter().find_map(|c| self.extra.iter().position(|e| e == c))
    }

    fn base_dir(&self) -> PathBuf {
        self.path.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    fn open_csv(path: &Path, columns: &Columns) -> Result<Dataset> {
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(false)
            .from_path(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        // Byte records: a field that is not UTF-8 rejects its row (bad_text), not the dataset.
        let headers: Vec<String> = rdr
            .byte_headers()
            .with_context(|| format!("{}: not a CSV file with a header row", path.display()))?
            .iter()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .collect();
        if headers.iter().any(|h| h.contains('\u{FFFD}') || h.chars().any(|c| c.is_control())) {
            bail!("{}: the header row is not text (is it a CSV file?)", path.display());
        }
        let find = |name: &str| headers.iter().position(|h| h == name);
        let audio_col = columns.audio.clone().unwrap_or_else(|| "file_name".into());
        let audio_i = find(&audio_col).with_context(|| {
            format!("{}: no `{audio_col}` column (columns: {})", path.display(), headers.join(", "))
        })?;
        let text_i = pick_text(&headers, columns)
            .with_context(|| format!("{}: {}", path.display(), no_text(&headers, columns)))?;
        let id_i = pick_id(&headers, columns, path)?;
        let mut extra: Vec<(String, usize)> = headers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != audio_i && *i != text_i && Some(*i) != id_i)
            .map(|(i, h)| (h.clone(), i))
            .collect();
        extra.sort();
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut rows = Vec::new();
        for (row, rec) in rdr.byte_records().enumerate() {
            let rec = rec.with_context(|| format!("{} row {}: malformed CSV", path.display(), row + 2))?;
            let mut bad_text = None;
            let mut get = |i: usize| -> Option<String> {
                let b = rec.get(i)?;
                let s = match std::str::from_utf8(b) {
                    Ok(s) => s.to_string(),
                    Err(e) => {
                        let col = &headers[i];
                        bad_text.get_or_insert(format!("column `{col}` is not UTF-8 (byte {})", e.valid_up_to()));
                        String::from_utf8_lossy(b).into_owned()
                    }
                };
                Some(s).filter(|s| !s.is_empty())
            };
            let file = get(audio_i).unwrap_or_default();
            let id = id_i.and_then(&mut get).unwrap_or_else(|| file.clone());
            let text = get(text_i);
            let extra_vals = extra.iter().map(|(_, i)| get(*i)).collect();
            rows.push(Utterance {
                row,
                id,
                audio: if file.is_empty() { Audio::None } else { Audio::File(base.join(&file)) },
                audio_path: file,
                text,
                extra: extra_vals,
                bad_text,
            });
        }
        Ok(Dataset {
            path: path.into(),
            kind: Kind::AudioFolder,
            extra: extra.into_iter().map(|(n, _)| n).collect(),
            rows,
            parquet: vec![],
            parquet_rows: 0,
            columns: columns.clone(),
        })
    }

    fn open_jsonl(path: &Path, columns: &Columns) -> Result<Dataset> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let audio_key = columns.audio.clone().unwrap_or_else(|| "audio_filepath".into());
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut objs = Vec::new();
        // A line that is not UTF-8 rejects its utterance (bad_text), not the manifest.
        let mut bad_lines: HashMap<usize, String> = HashMap::new();
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = match std::str::from_utf8(raw) {
                Ok(l) => std::borrow::Cow::Borrowed(l),
                Err(e) => {
                    bad_lines.insert(i, format!("line {} is not UTF-8 (byte {})", i + 1, e.valid_up_to()));
                    String::from_utf8_lossy(raw)
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line)
                .with_context(|| format!("{} line {}: not a JSON object", path.display(), i + 1))?;
            objs.push((i, v));
        }
        let keys: std::collections::BTreeSet<String> = objs.iter().flat_map(|(_, o)| o.keys().cloned()).collect();
        let keys: Vec<String> = keys.into_iter().collect();
        if !objs.is_empty() && !keys.contains(&audio_key) {
            bail!("{}: no line has an `{audio_key}` key (keys: {})", path.display(), keys.join(", "));
        }
        let text_key = match pick_text(&keys, columns) {
            Some(i) => Some(keys[i].clone()),
            None if objs.is_empty() => None,
            None => bail!("{}: {}", path.display(), no_text(&keys, columns)),
        };
        let id_key = pick_id(&keys, columns, path)?.map(|i| keys[i].clone());
        let extra: Vec<String> = keys
            .iter()
            .filter(|k| {
                **k != audio_key && Some(*k) != text_key.as_ref() && Some(*k) != id_key.as_ref() && *k != "duration"
            })
            .cloned()
            .collect();
        let rows = objs
            .into_iter()
            .enumerate()
            .map(|(row, (line, o))| {
                let s = |k: &str| o.get(k).and_then(value_string);
                let file = s(&audio_key).unwrap_or_default();
                let p = Path::new(&file);
                Utterance {
                    row,
                    id: id_key.as_deref().and_then(s).unwrap_or_else(|| file.clone()),
                    audio: if file.is_empty() {
                        Audio::None
                    } else if p.is_absolute() {
                        Audio::File(p.into())
                    } else {
                        Audio::File(base.join(p))
                    },
                    audio_path: file,
                    text: text_key.as_deref().and_then(s).filter(|t| !t.is_empty()),
                    extra: extra.iter().map(|k| s(k)).collect(),
                    bad_text: bad_lines.get(&line).cloned(),
                }
            })
            .collect();
        Ok(Dataset {
            path: path.into(),
            kind: Kind::NemoJsonl,
            extra,
            rows,
            parquet: vec![],
            parquet_rows: 0,
            columns: columns.clone(),
        })
    }

    fn open_parquet(path: &Path, columns: &Columns) -> Result<Dataset> {
        let files = crate::artifacts::dataset::part_files(path)?;
        let mut total = 0;
        let mut schema_fields: Option<Vec<String>> = None;
        for f in &files {
            let b = ParquetRecordBatchReaderBuilder::try_new(File::open(f)?)
                .with_context(|| format!("{} is not Parquet", f.display()))?;
            total += b.metadata().file_metadata().num_rows() as usize;
            if schema_fields.is_none() {
                schema_fields = Some(b.schema().fields().iter().map(|f| f.name().clone()).collect());
            }
        }
        let names = schema_fields.unwrap_or_default();
        let audio_col = columns.audio.clone().unwrap_or_else(|| "audio".into());
        if !names.contains(&audio_col) {
            bail!("{}: no `{audio_col}` column (columns: {})", path.display(), names.join(", "));
        }
        let text_i =
            pick_text(&names, columns).with_context(|| format!("{}: {}", path.display(), no_text(&names, columns)))?;
        let id_i = pick_id(&names, columns, path)?;
        let mut extra: Vec<String> = names
            .iter()
            .enumerate()
            .filter(|(i, n)| **n != audio_col && *i != text_i && Some(*i) != id_i)
            .map(|(_, n)| n.clone())
            .collect();
        extra.sort();
        let mut cols = columns.clone();
        cols.audio = Some(audio_col);
        cols.text = Some(names[text_i].clone());
        cols.id = id_i.map(|i| names[i].clone());
        Ok(Dataset {
            path: path.into(),
            kind: Kind::HfParquet,
            extra,
            rows: vec![],
            parquet: files,
            parquet_rows: total,
            columns: cols,
        })
    }

    /// Rows `range` in order, reading audio bytes lazily for Parquet.
    pub fn iter(&self, range: std::ops::Range<usize>) -> Box<dyn Iterator<Item = Result<Utterance>> + '_> {
        if self.kind != Kind::HfParquet {
            return Box::new(
                self.rows[range.start.min(self.rows.len())..range.end.min(self.rows.len())].iter().cloned().map(Ok),
            );
        }
        Box::new(ParquetRows {
            ds: self,
            files: self.parquet.clone().into_iter(),
            reader: None,
            batch: None,
            pos: 0,
            row: 0,
            range,
        })
    }

    fn parquet_utterances(&self, batch: &RecordBatch, first_row: usize) -> Result<Vec<Utterance>> {
        let audio_col = self.columns.audio.as_deref().unwrap();
        let col = batch.column_by_name(audio_col).unwrap();
        let n = batch.num_rows();
        let strings = |name: &str| -> Result<Vec<Option<String>>> {
            let c = batch.column_by_name(name).with_context(|| format!("no column {name}"))?;
            let c = arrow::compute::cast(c, &DataType::Utf8)
                .with_context(|| format!("column `{name}` cannot be read as text"))?;
            Ok(c.as_string::<i32>().iter().map(|s| s.map(str::to_string)).collect())
        };
        let (bytes, paths): (Vec<Option<Vec<u8>>>, Vec<Option<String>>) = match col.data_type() {
            DataType::Struct(_) => {
                let s: &StructArray = col.as_struct();
                let b = s.column_by_name("bytes").context("audio struct has no `bytes` field")?;
                let bytes = match b.data_type() {
                    DataType::Binary => b.as_binary::<i32>().iter().map(|v| v.map(<[u8]>::to_vec)).collect(),
                    DataType::LargeBinary => b.as_binary::<i64>().iter().map(|v| v.map(<[u8]>::to_vec)).collect(),
                    DataType::BinaryView => b.as_binary_view().iter().map(|v| v.map(<[u8]>::to_vec)).collect(),
                    other => bail!("audio.bytes has type {other}, expected Binary"),
                };
                let paths = match s.column_by_name("path") {
                    Some(p) => arrow::compute::cast(p, &DataType::Utf8)?
                        .as_string::<i32>()
                        .iter()
                        .map(|v| v.map(str::to_string))
                        .collect(),
                    None => vec![None; n],
                };
                (bytes, paths)
            }
            DataType::Utf8 | DataType::LargeUtf8 => (vec![None; n], strings(audio_col)?),
            other => bail!("column `{audio_col}` has type {other}; expected a struct of bytes and path"),
        };
        let text = strings(self.columns.text.as_deref().unwrap())?;
        let ids = match &self.columns.id {
            Some(c) => strings(c)?,
            None => vec![None; n],
        };
        let extra: Vec<Vec<Option<String>>> = self.extra.iter().map(|c| strings(c)).collect::<Result<_>>()?;
        let base = self.base_dir();
        Ok((0..n)
            .map(|i| {
                let row = first_row + i;
                let path = paths[i].clone().unwrap_or_default();
                let ext = Path::new(&path).extension().and_then(|e| e.to_str()).map(str::to_string);
                let audio = match &bytes[i] {
                    Some(b) if !b.is_empty() => Audio::Bytes { bytes: b.clone(), extension: ext },
                    _ if !path.is_empty() => Audio::File(base.join(&path)),
                    _ => Audio::None,
                };
                Utterance {
                    row,
                    id: ids[i]
                        .clone()
                        .unwrap_or_else(|| if path.is_empty() { format!("row-{row}") } else { path.clone() }),
                    audio_path: path,
                    audio,
                    text: text[i].clone().filter(|t| !t.is_empty()),
                    extra: extra.iter().map(|c| c[i].clone()).collect(),
                    bad_text: None,
                }
            })
            .collect())
    }
}

struct ParquetRows<'a> {
    ds: &'a Dataset,
    files: std::vec::IntoIter<PathBuf>,
    reader: Option<ParquetRecordBatchReader>,
    batch: Option<std::vec::IntoIter<Utterance>>,
    pos: usize,
    row: usize,
    range: std::ops::Range<usize>,
}

impl Iterator for ParquetRows<'_> {
    type Item = Result<Utterance>;
    fn next(&mut self) -> Option<Result<Utterance>> {
        loop {
            if self.row >= self.range.end {
                return None;
            }
            if let Some(it) = &mut self.batch {
                if let Some(u) = it.next() {
                    self.row += 1;
                    if u.row >= self.range.start {
                        return Some(Ok(u));
                    }
                    continue;
                }
                self.batch = None;
            }
            if let Some(r) = &mut self.reader {
                match r.next() {
                    Some(Ok(b)) => {
                        let first = self.pos;
                        self.pos += b.num_rows();
                        if self.pos <= self.range.start {
                            self.row = self.pos;
                            continue;
                        }
                        match self.ds.parquet_utterances(&b, first) {
                            Ok(v) => self.batch = Some(v.into_iter()),
                            Err(e) => return Some(Err(e.context(format!("{}", self.ds.path.display())))),
                        }
                        continue;
                    }
                    Some(Err(e)) => return Some(Err(e.into())),
                    None => self.reader = None,
                }
            }
            let f = self.files.next()?;
            let built = File::open(&f)
                .map_err(anyhow::Error::from)
                .and_then(|file| Ok(ParquetRecordBatchReaderBuilder::try_new(file)?.with_batch_size(16).build()?));
            match built {
                Ok(r) => self.reader = Some(r),
                Err(e) => return Some(Err(e.context(format!("reading {}", f.display())))),
            }
        }
    }
}

/// The error when no transcript column is found: what was looked for and what is there.
fn no_text(names: &[String], columns: &Columns) -> String {
    let wanted = match &columns.text {
        Some(t) => format!("`{t}`"),
        None => TEXT_COLUMNS.map(|t| format!("`{t}`")).join(", "),
    };
    format!("no transcript column ({wanted}; columns: {}); name it with the stage's `columns.text`", names.join(", "))
}

fn pick_text(names: &[String], columns: &Columns) -> Option<usize> {
    match &columns.text {
        Some(t) => names.iter().position(|n| n == t),
        None => TEXT_COLUMNS.iter().find_map(|t| names.iter().position(|n| n == t)),
    }
}

fn pick_id(names: &[String], columns: &Columns, path: &Path) -> Result<Option<usize>> {
    match &columns.id {
        Some(c) => names
            .iter()
            .position(|n| n == c)
            .map(Some)
            .with_context(|| format!("{}: no id column `{c}` (columns: {})", path.display(), names.join(", "))),
        None => Ok(names.iter().position(|n| n == "id")),
    }
}

fn value_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The label values of each extra column, for summaries.
pub fn extra_values(utts: &[Utterance], extra: &[String]) -> BTreeMap<String, Vec<Option<String>>> {
    extra.iter().enumerate().map(|(i, n)| (n.clone(), utts.iter().map(|u| u.extra[i].clone()).collect())).collect()
}

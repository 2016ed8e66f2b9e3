//! `pipeline show PATH`: schema, row count, metadata and the first rows of any Parquet file or
//! dataset directory, with long vectors abbreviated.

use std::fmt::Write;
use std::path::Path;

use anyhow::Result;
use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use super::dataset::read_dataset;

/// Render a summary of the dataset at `path`, showing at most `rows` rows.
pub fn show(path: &Path, rows: usize) -> Result<String> {
    let ds = read_dataset(path)?;
    let mut out = String::new();
    writeln!(
        out,
        "{}  ({} part file{}, {} rows)",
        path.display(),
        ds.parts.len(),
        if ds.parts.len() == 1 { "" } else { "s" },
        ds.num_rows()
    )?;
    writeln!(out, "schema:")?;
    for f in ds.schema.fields() {
        writeln!(
            out,
            "  {}: {}{}",
            f.name(),
            type_name(f.data_type()),
            if f.is_nullable() { "" } else { " not null" }
        )?;
    }
    if !ds.metadata.is_empty() {
        writeln!(out, "metadata:")?;
        for (k, v) in &ds.metadata {
            let v = if v.len() > 100 { format!("{}…", &v[..v.floor_char_boundary(100)]) } else { v.clone() };
            writeln!(out, "  {k}: {v}")?;
        }
    }
    let names: Vec<String> = ds.schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut table: Vec<Vec<String>> = vec![names];
    'outer: for batch in &ds.batches {
        for r in 0..batch.num_rows() {
            if table.len() > rows {
                break 'outer;
            }
            let row = batch.columns().iter().map(|c| cell(c.as_ref(), r)).collect::<Result<Vec<_>>>()?;
            table.push(row);
        }
    }
    writeln!(out, "first {} rows:", table.len() - 1)?;
    let widths: Vec<usize> =
        (0..table[0].len()).map(|c| table.iter().map(|r| r[c].chars().count()).max().unwrap_or(0).min(60)).collect();
    for (i, row) in table.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(v, &w)| {
                let v = if v.chars().count() > w {
                    format!("{}…", v.chars().take(w - 1).collect::<String>())
                } else {
                    v.clone()
                };
                format!("{v:<w$}")
            })
            .collect();
        writeln!(out, "  {}", line.join("  ").trim_end())?;
        if i == 0 {
            writeln!(out, "  {}", widths.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>().join("  "))?;
        }
    }
    Ok(out)
}

fn type_name(t: &DataType) -> String {
    match t {
        DataType::FixedSizeList(f, n) => format!("FixedSizeList<{}, {n}>", type_name(f.data_type())),
        DataType::List(f) => format!("List<{}>", type_name(f.data_type())),
        DataType::LargeList(f) => format!("LargeList<{}>", type_name(f.data_type())),
        other => other.to_string(),
    }
}

/// One cell; lists show their first three values and their length.
fn cell(col: &dyn Array, row: usize) -> Result<String> {
    if col.is_null(row) {
        return Ok("null".into());
    }
    let list: Option<std::sync::Arc<dyn Array>> = match col.data_type() {
        DataType::FixedSizeList(_, _) => Some(col.as_fixed_size_list().value(row)),
        DataType::List(_) => Some(col.as_list::<i32>().value(row)),
        DataType::LargeList(_) => Some(col.as_list::<i64>().value(row)),
        _ => None,
    };
    if let Some(values) = list {
        let n = values.len();
        let shown = n.min(3);
        let parts = (0..shown).map(|i| cell(values.as_ref(), i)).collect::<Result<Vec<_>>>()?;
        let more = if n > shown { format!(", … ({n})") } else { String::new() };
        return Ok(format!("[{}{more}]", parts.join(", ")));
    }
    let opts = FormatOptions::default().with_null("null");
    let f = ArrayFormatter::try_new(col, &opts)?;
    let s = f.value(row).to_string();
    Ok(match col.data_type() {
        DataType::Float32 | DataType::Float64 => match s.parse::<f64>() {
            Ok(v) if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) => format!("{v:.4e}"),
            Ok(v) => format!("{:.4}", v).trim_end_matches('0').trim_end_matches('.').to_string(),
            Err(_) => s,
        },
        _ => s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::{Embeddings, write_dataset};

    #[test]
    fn shows_schema_rows_and_abbreviated_vectors() {
        let dir = std::env::temp_dir().join(format!("wm-show-{}", std::process::id()));
        let e = Embeddings {
            ids: vec!["utt-1".into()],
            audio_paths: vec!["a.flac".into()],
            durations: vec![1.25],
            transcriptions: vec!["hello there".into()],
            extra: vec![],
            numbers: Vec::new(),
            dim: 5,
            values: vec![0.5, -1.0, 2.0, 3.0, 4.0],
        };
        write_dataset(&dir, &[e.to_batch().unwrap()], &crate::artifacts::standard_metadata("embed", Some("h1")))
            .unwrap();
        let s = show(&dir, 10).unwrap();
        assert!(s.contains("1 rows"), "{s}");
        assert!(s.contains("embedding: FixedSizeList<Float32, 5> not null"), "{s}");
        assert!(s.contains("[0.5, -1, 2, … (5)]"), "{s}");
        assert!(s.contains("utt-1") && s.contains("hello there") && s.contains("1.25"), "{s}");
        assert!(s.contains("checkpoint_hash: h1"), "{s}");
    }
}

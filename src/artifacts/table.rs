//! Small column-oriented tables (metrics, logs, predictions) built row by row and written as
//! Parquet datasets.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use super::columns::vector_array;

#[derive(Debug, Clone)]
pub enum Column {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Str(Vec<Option<String>>),
    Bool(Vec<Option<bool>>),
    /// Fixed-width f32 vectors (FixedSizeList<Float32, dim>).
    Vector {
        dim: usize,
        values: Vec<f32>,
    },
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Int(v) => v.len(),
            Column::Float(v) => v.len(),
            Column::Str(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::Vector { dim, values } => values.len() / (*dim).max(1),
        }
    }
}

/// A table with named columns of equal length.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub columns: Vec<(String, Column)>,
}

/// A value for `Table::push`.
pub enum Value {
    I(i64),
    F(f64),
    S(String),
    B(bool),
    V(Vec<f32>),
    Null,
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::I(v)
    }
}
impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::I(v as i64)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::F(v)
    }
}
impl From<f32> for Value {
    fn from(v: f32) -> Value {
        Value::F(v as f64)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::S(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::S(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::B(v)
    }
}
impl From<Vec<f32>> for Value {
    fn from(v: Vec<f32>) -> Value {
        Value::V(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map(Into::into).unwrap_or(Value::Null)
    }
}

impl Table {
    /// Append one row; the first row fixes the columns and their types (a Null-only column
    /// is typed by its first non-null value's column kind, defaulting to Float).
    pub fn push(&mut self, row: Vec<(&str, Value)>) -> Result<()> {
        let n = self.len();
        if n > 0 {
            // Check before changing anything, so a bad row leaves the table as it was.
            if let Some((name, _)) = self.columns.iter().find(|(c, _)| !row.iter().any(|(r, _)| r == c)) {
                bail!("row {n} has no value for `{name}`");
            }
            if row.len() != self.columns.len() {
                bail!("row {n} has columns the first row did not have");
            }
        }
        for (name, value) in row {
            let idx = match self.columns.iter().position(|(c, _)| c == name) {
                Some(i) => i,
                None => {
                    if n > 0 {
                        bail!("column `{name}` appears after the first row");
                    }
                    let col = match &value {
                        Value::I(_) => Column::Int(vec![]),
                        Value::S(_) => Column::Str(vec![]),
                        Value::B(_) => Column::Bool(vec![]),
                        Value::V(v) => Column::Vector { dim: v.len(), values: vec![] },
                        Value::F(_) | Value::Null => Column::Float(vec![]),
                    };
                    self.columns.push((name.to_string(), col));
                    self.columns.len() - 1
                }
            };
            let col = &mut self.columns[idx].1;
            match (col, value) {
                (Column::Int(v), Value::I(x)) => v.push(Some(x)),
                (Column::Int(v), Value::Null) => v.push(None),
                (Column::Float(v), Value::F(x)) => v.push(Some(x)),
                (Column::Float(v), Value::I(x)) => v.push(Some(x as f64)),
                (Column::Float(v), Value::Null) => v.push(None),
                (Column::Str(v), Value::S(x)) => v.push(Some(x)),
                (Column::Str(v), Value::Null) => v.push(None),
                (Column::Bool(v), Value::B(x)) => v.push(Some(x)),
                (Column::Bool(v), Value::Null) => v.push(None),
                (Column::Vector { dim, values }, Value::V(x)) if x.len() == *dim => values.extend(x),
                (Column::Vector { dim, values }, Value::Null) => values.extend(std::iter::repeat_n(f32::NAN, *dim)),
                _ => bail!("column `{name}`: a value of another type"),
            }
        }
        if let Some((name, _)) = self.columns.iter().find(|(_, c)| c.len() != n + 1) {
            bail!("row {n} has no value for `{name}`");
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.columns.first().map(|(_, c)| c.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_batch(&self) -> Result<RecordBatch> {
        let mut fields = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for (name, c) in &self.columns {
            let (dt, arr): (DataType, ArrayRef) = match c {
                Column::Int(v) => (DataType::Int64, Arc::new(Int64Array::from(v.clone()))),
                Column::Float(v) => (DataType::Float64, Arc::new(Float64Array::from(v.clone()))),
                Column::Str(v) => (DataType::Utf8, Arc::new(StringArray::from(v.clone()))),
                Column::Bool(v) => (DataType::Boolean, Arc::new(BooleanArray::from(v.clone()))),
                Column::Vector { dim, values } => {
                    (super::columns::vector_type(*dim), vector_array(values.clone(), *dim)?)
                }
            };
            fields.push(Field::new(name, dt, true));
            arrays.push(arr);
        }
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
    }

    pub fn write(&self, dir: &Path, metadata: &BTreeMap<String, String>) -> Result<usize> {
        super::write_dataset(dir, &[self.to_batch()?], metadata)
    }

    /// As [`Table::write`], or as shard `shard`'s part files of the dataset `dir`.
    pub fn write_shard(
        &self,
        dir: &Path,
        metadata: &BTreeMap<String, String>,
        shard: Option<super::Shard>,
    ) -> Result<usize> {
        let Some(shard) = shard else { return self.write(dir, metadata) };
        let batch = self.to_batch()?;
        let mut w = super::DatasetWriter::create(dir, batch.schema(), metadata, Some(shard))?;
        w.write(&batch)?;
        let rows = batch.num_rows();
        w.finish()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_typed_columns() {
        let mut t = Table::default();
        t.push(vec![
            ("epoch", 1usize.into()),
            ("loss", 0.5f64.into()),
            ("phase", "soft".into()),
            ("p", vec![0.25f32, 0.75].into()),
        ])
        .unwrap();
        t.push(vec![
            ("epoch", 2usize.into()),
            ("loss", Value::Null),
            ("phase", "topk_soft".into()),
            ("p", vec![0.5f32, 0.5].into()),
        ])
        .unwrap();
        assert!(t.push(vec![("epoch", 3usize.into())]).is_err(), "a missing column is an error");
        let b = t.to_batch().unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.schema().field(3).data_type(), &super::super::columns::vector_type(2));
        assert_eq!(b.column(1).null_count(), 1);
    }
}

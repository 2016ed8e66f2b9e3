//! Typed access to columns, tolerant of what other tools write back: Utf8 or LargeUtf8 (or
//! Utf8View) strings; FixedSizeList, List or LargeList vectors with a nullable child of any
//! name (polars and duckdb rewrite our FixedSizeList that way).

use std::sync::Arc;

use anyhow::{Result, bail};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeListArray, Float32Array, Int32Array, RecordBatch, StringArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type};

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    match batch.column_by_name(name) {
        Some(c) => Ok(c),
        None => {
            let have: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
            bail!("column `{name}` is missing (columns: {})", have.join(", "))
        }
    }
}

fn wrong(name: &str, got: &DataType, want: &str) -> anyhow::Error {
    anyhow::anyhow!("column `{name}` has type {got}, expected {want}")
}

fn no_nulls(name: &str, a: &dyn Array) -> Result<()> {
    if a.null_count() > 0 {
        bail!("column `{name}` has {} null values", a.null_count());
    }
    Ok(())
}

pub fn strings(batch: &RecordBatch, name: &str) -> Result<Vec<String>> {
    Ok(opt_strings(batch, name)?.into_iter().map(Option::unwrap_or_default).collect())
}

pub fn opt_strings(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>> {
    let c = column(batch, name)?;
    match c.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let s = cast(c, &DataType::Utf8)?;
            Ok(s.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect())
        }
        other => Err(wrong(name, other, "Utf8")),
    }
}

/// A nullable float column as f32.
pub fn opt_f32s(batch: &RecordBatch, name: &str) -> Result<Vec<Option<f32>>> {
    let c = column(batch, name)?;
    match c.data_type() {
        DataType::Float32 | DataType::Float64 | DataType::Float16 => {
            let a = cast(c, &DataType::Float32)?;
            Ok(a.as_primitive::<Float32Type>().iter().collect())
        }
        other => Err(wrong(name, other, "Float32")),
    }
}

pub fn f32s(batch: &RecordBatch, name: &str) -> Result<Vec<f32>> {
    let c = column(batch, name)?;
    match c.data_type() {
        DataType::Float32 | DataType::Float64 | DataType::Float16 => {
            no_nulls(name, c)?;
            let a = cast(c, &DataType::Float32)?;
            Ok(a.as_primitive::<Float32Type>().values().to_vec())
        }
        other => Err(wrong(name, other, "Float32")),
    }
}

pub fn i64s(batch: &RecordBatch, name: &str) -> Result<Vec<i64>> {
    let c = column(batch, name)?;
    if !c.data_type().is_integer() {
        return Err(wrong(name, c.data_type(), "an integer type"));
    }
    no_nulls(name, c)?;
    let a = cast(c, &DataType::Int64)?;
    Ok(a.as_primitive::<arrow::datatypes::Int64Type>().values().to_vec())
}

pub fn bools(batch: &RecordBatch, name: &str) -> Result<Vec<bool>> {
    let c = column(batch, name)?;
    match c.data_type() {
        DataType::Boolean => {
            no_nulls(name, c)?;
            Ok(c.as_boolean().iter().map(|v| v.unwrap_or(false)).collect())
        }
        other => Err(wrong(name, other, "Boolean")),
    }
}

/// A vector column as (row-major values, dimension). `dim` checks the width when known.
pub fn vectors(batch: &RecordBatch, name: &str, dim: Option<usize>) -> Result<(Vec<f32>, usize)> {
    let c = column(batch, name)?;
    no_nulls(name, c)?;
    let (values, width): (ArrayRef, Option<usize>) = match c.data_type() {
        DataType::FixedSizeList(_, n) => {
            let l = c.as_fixed_size_list();
            (l.values().slice(l.value_offset_at(0), l.len() * *n as usize), Some(*n as usize))
        }
        DataType::List(_) => {
            let l = c.as_list::<i32>();
            let off = l.value_offsets();
            let w = rows_width(name, off.windows(2).map(|w| (w[1] - w[0]) as usize))?;
            (l.values().slice(off[0] as usize, (off[l.len()] - off[0]) as usize), w)
        }
        DataType::LargeList(_) => {
            let l = c.as_list::<i64>();
            let off = l.value_offsets();
            let w = rows_width(name, off.windows(2).map(|w| (w[1] - w[0]) as usize))?;
            (l.values().slice(off[0] as usize, (off[l.len()] - off[0]) as usize), w)
        }
        other => return Err(wrong(name, other, "FixedSizeList<Float32>")),
    };
    let flat: Vec<f32> = match values.data_type() {
        DataType::Float32 => values.as_primitive::<Float32Type>().values().to_vec(),
        DataType::Float64 => values.as_primitive::<Float64Type>().values().iter().map(|&v| v as f32).collect(),
        other => return Err(wrong(name, other, "a list of Float32")),
    };
    if values.null_count() > 0 {
        bail!("column `{name}` has null vector elements");
    }
    let width = width.unwrap_or(dim.unwrap_or(0));
    if let Some(d) = dim {
        if batch.num_rows() > 0 && width != d {
            bail!("column `{name}` holds vectors of length {width}, expected {d}");
        }
    }
    Ok((flat, width))
}

fn rows_width(name: &str, mut widths: impl Iterator<Item = usize>) -> Result<Option<usize>> {
    let Some(first) = widths.next() else { return Ok(None) };
    if widths.any(|w| w != first) {
        bail!("column `{name}` holds vectors of different lengths");
    }
    Ok(Some(first))
}

/// The field of a vector column: FixedSizeList<Float32, dim>.
pub fn vector_type(dim: usize) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), dim as i32)
}

pub fn vector_array(values: Vec<f32>, dim: usize) -> Result<ArrayRef> {
    let child = Field::new("item", DataType::Float32, true);
    let arr = FixedSizeListArray::try_new(Arc::new(child), dim as i32, Arc::new(Float32Array::from(values)), None)?;
    Ok(Arc::new(arr))
}

pub fn string_array<S: AsRef<str>>(v: &[S]) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v.iter().map(|s| s.as_ref())))
}

pub fn opt_string_array(v: &[Option<String>]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

pub fn f32_array(v: &[f32]) -> ArrayRef {
    Arc::new(Float32Array::from(v.to_vec()))
}

pub fn opt_f32_array(v: &[Option<f32>]) -> ArrayRef {
    Arc::new(Float32Array::from(v.to_vec()))
}

pub fn i32_array(v: &[i32]) -> ArrayRef {
    Arc::new(Int32Array::from(v.to_vec()))
}

pub fn bool_array(v: &[bool]) -> ArrayRef {
    Arc::new(BooleanArray::from(v.to_vec()))
}

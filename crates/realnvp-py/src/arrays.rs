//! What crosses between Python and the model: arrays read from anything NumPy can read
//! (checked for rank, shape, dtype and range, borrowed without a copy when they are
//! C-contiguous in the expected dtype), views of them that the computation can use with
//! the GIL released, and the NumPy arrays returned.

use burn::tensor::{Int, Tensor, TensorData};
use numpy::{
    Element, PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::Cpu;

/// `numpy.asarray(x)`: arrays pass unchanged; `__array__`, the buffer protocol and nested
/// sequences become arrays.
fn as_ndarray<'py>(x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyUntypedArray>> {
    let array = x.py().import("numpy")?.call_method1("asarray", (x,))?;
    Ok(array.cast_into::<PyUntypedArray>()?)
}

/// The shape as Python prints it, `(2, 1, 28, 28)`.
fn shape_text(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `array` (`what`, for messages) as a C-contiguous array of `T` (NumPy's `dtype`): no
/// copy when it already is one, else converted (`astype`) or laid out anew.
fn contiguous<'py, T: Element>(
    array: Bound<'py, PyUntypedArray>,
    dtype: &str,
    what: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let py = array.py();
    let array = if array.dtype().is_equiv_to(&numpy::dtype::<T>(py)) {
        array.into_any()
    } else {
        array.call_method1("astype", (dtype,))?
    };
    let array = if array.cast::<PyUntypedArray>()?.is_c_contiguous() {
        array
    } else {
        py.import("numpy")?
            .call_method1("ascontiguousarray", (array,))?
    };
    let array = array.cast_into::<PyArrayDyn<T>>()?;
    array
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("{what}: the array cannot be read: {e}")))
}

/// Images as a model reads them: `n` images of pixel levels, borrowed from NumPy.
pub struct PixelArray<'py> {
    levels: PyReadonlyArrayDyn<'py, u8>,
    shape: [usize; 3],
    channels_last: bool,
}

impl<'py> PixelArray<'py> {
    /// Reads images `[N, C, H, W]` (or `[N, H, W, C]` when `channels_last`) of integer
    /// levels `0..levels`, for a model of `shape` `[C, H, W]`. uint8 arrays are borrowed;
    /// other integer types are range-checked and converted.
    pub fn read(
        x: &Bound<'py, PyAny>,
        shape: [usize; 3],
        levels: u32,
        channels_last: bool,
    ) -> PyResult<Self> {
        if levels > 256 {
            return Err(PyValueError::new_err(format!(
                "images: the model has {levels} pixel levels; the Python package reads and \
                 writes 8-bit levels (at most 256)"
            )));
        }
        let array = as_ndarray(x)?;
        let [c, h, w] = shape;
        let expected = if channels_last {
            format!("[N, {h}, {w}, {c}] (channels last)")
        } else {
            format!("[N, {c}, {h}, {w}] (channels_last=True for [N, {h}, {w}, {c}])")
        };
        let wanted = if channels_last { [h, w, c] } else { [c, h, w] };
        if array.ndim() != 4 || array.shape()[1..] != wanted {
            return Err(PyValueError::new_err(format!(
                "images: expected an array of shape {expected}, got shape {}",
                shape_text(array.shape())
            )));
        }
        let top = levels - 1;
        let kind = array.dtype().kind();
        if !matches!(kind, b'u' | b'i' | b'b') {
            return Err(PyValueError::new_err(format!(
                "images: expected integer pixel levels 0..={top} (uint8), got dtype {}; \
                 convert whole levels with .astype(numpy.uint8)",
                array.dtype()
            )));
        }
        if kind != b'u' || array.dtype().itemsize() != 1 {
            check_integer_range(&array, top)?;
        }
        let levels = contiguous::<u8>(array, "uint8", "images")?;
        let pixels = Self {
            levels,
            shape,
            channels_last,
        };
        pixels.check_levels(top)?;
        Ok(pixels)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.levels.shape()[0]
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses a level above `top` (uint8 data for a model of fewer than 256 levels).
    fn check_levels(&self, top: u32) -> PyResult<()> {
        let values = self.view().values;
        if top >= u32::from(u8::MAX) {
            return Ok(());
        }
        if let Some(at) = values.iter().position(|&v| u32::from(v) > top) {
            let per_image = self.shape.iter().product::<usize>();
            return Err(PyValueError::new_err(format!(
                "images: pixel level {} in image {} is outside 0..={top}, the levels the \
                 model was trained on",
                values[at],
                at / per_image
            )));
        }
        Ok(())
    }

    /// A view the computation can hold with the GIL released.
    pub fn view(&self) -> PixelView<'_> {
        PixelView {
            values: self.levels.as_slice().unwrap_or(&[]),
            shape: self.shape,
            channels_last: self.channels_last,
        }
    }
}

/// Refuses integer values outside `0..=top` before they are narrowed to uint8.
fn check_integer_range(array: &Bound<'_, PyUntypedArray>, top: u32) -> PyResult<()> {
    if array.len() == 0 {
        return Ok(());
    }
    let min: f64 = array.call_method0("min")?.extract()?;
    let max: f64 = array.call_method0("max")?.extract()?;
    if min < 0.0 || max > f64::from(top) {
        let bad = if min < 0.0 { min } else { max };
        return Err(PyValueError::new_err(format!(
            "images: pixel level {bad} is outside 0..={top}, the levels the model was \
             trained on"
        )));
    }
    Ok(())
}

/// Pixel levels in a contiguous slice, `[N, C, H, W]` or `[N, H, W, C]`.
#[derive(Clone, Copy)]
pub struct PixelView<'a> {
    values: &'a [u8],
    shape: [usize; 3],
    channels_last: bool,
}

impl PixelView<'_> {
    /// Images `start..start + len` as levels `[len, C, H, W]`.
    pub fn tensor(&self, start: usize, len: usize) -> Tensor<Cpu, 4> {
        let [c, h, w] = self.shape;
        let per_image = c * h * w;
        let part = &self.values[start * per_image..(start + len) * per_image];
        let levels: Vec<f32> = if self.channels_last {
            let mut out = vec![0.0; part.len()];
            for (image, source) in out
                .chunks_exact_mut(per_image)
                .zip(part.chunks_exact(per_image))
            {
                for (pixel, channels) in source.chunks_exact(c).enumerate() {
                    for (channel, &v) in channels.iter().enumerate() {
                        image[channel * h * w + pixel] = f32::from(v);
                    }
                }
            }
            out
        } else {
            part.iter().map(|&v| f32::from(v)).collect()
        };
        Tensor::from_data(TensorData::new(levels, [len, c, h, w]), &Default::default())
    }
}

/// Float32 values of a fixed shape after the first dimension, borrowed from NumPy.
pub struct FloatArray<'py> {
    values: PyReadonlyArrayDyn<'py, f32>,
}

impl<'py> FloatArray<'py> {
    /// Reads `what` as float32 `[N, inner...]`: float32 arrays are borrowed, other real
    /// types converted; NaN and infinity are refused.
    pub fn read(x: &Bound<'py, PyAny>, what: &str, inner: &[usize]) -> PyResult<Self> {
        let array = as_ndarray(x)?;
        let mut expected = vec!["N".to_string()];
        expected.extend(inner.iter().map(usize::to_string));
        if array.ndim() != inner.len() + 1 || array.shape()[1..] != *inner {
            return Err(PyValueError::new_err(format!(
                "{what}: expected a float32 array of shape [{}], got shape {}",
                expected.join(", "),
                shape_text(array.shape())
            )));
        }
        if !matches!(array.dtype().kind(), b'f' | b'i' | b'u' | b'b') {
            return Err(PyValueError::new_err(format!(
                "{what}: expected float32 values, got dtype {}",
                array.dtype()
            )));
        }
        let values = contiguous::<f32>(array, "float32", what)?;
        let slice = values.as_slice().unwrap_or(&[]);
        if let Some(at) = slice.iter().position(|v| !v.is_finite()) {
            let per_row = inner.iter().product::<usize>().max(1);
            return Err(PyValueError::new_err(format!(
                "{what}: row {} holds {}; expected finite values",
                at / per_row,
                slice[at]
            )));
        }
        Ok(Self { values })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.values.shape()[0]
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values, row-major.
    pub fn values(&self) -> &[f32] {
        self.values.as_slice().unwrap_or(&[])
    }
}

/// The rows `start..start + shape[0]` of row-major `values` (rows of `shape[1..]`), as a
/// tensor of `shape`.
pub fn rows<const D: usize>(values: &[f32], start: usize, shape: [usize; D]) -> Tensor<Cpu, D> {
    let per_row: usize = shape[1..].iter().product();
    let part = values[start * per_row..(start + shape[0]) * per_row].to_vec();
    Tensor::from_data(TensorData::new(part, shape), &Default::default())
}

/// The error for labels (`what`) given to a model without classes.
pub fn not_conditional(what: &str) -> PyErr {
    PyValueError::new_err(format!(
        "{what}: the model is not class-conditional (it was trained without labels)"
    ))
}

/// Reads class labels `[n]`, integers in `0..classes`.
pub fn read_labels(x: &Bound<'_, PyAny>, n: usize, classes: usize) -> PyResult<Vec<i64>> {
    if classes == 0 {
        return Err(not_conditional("labels"));
    }
    let array = as_ndarray(x)?;
    if array.shape() != [n] {
        return Err(PyValueError::new_err(format!(
            "labels: expected one integer label per example, shape ({n},), got shape {}",
            shape_text(array.shape())
        )));
    }
    if !matches!(array.dtype().kind(), b'i' | b'u') {
        return Err(PyValueError::new_err(format!(
            "labels: expected integer class labels 0..={}, got dtype {}",
            classes - 1,
            array.dtype()
        )));
    }
    let labels: Vec<i64> = array
        .call_method1("astype", ("int64",))?
        .call_method0("tolist")?
        .extract()?;
    if let Some((i, &bad)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| !label_in_range(l, classes))
    {
        return Err(PyValueError::new_err(format!(
            "labels: label {bad} of example {i} is outside 0..={}, the model's {classes} classes",
            classes - 1
        )));
    }
    Ok(labels)
}

/// Whether `label` is one of `classes` classes.
pub fn label_in_range(label: i64, classes: usize) -> bool {
    usize::try_from(label).is_ok_and(|l| l < classes)
}

/// Labels `start..start + len` as a tensor.
pub fn label_tensor(labels: &[i64], start: usize, len: usize) -> Tensor<Cpu, 1, Int> {
    Tensor::from_data(
        TensorData::new(labels[start..start + len].to_vec(), [len]),
        &Default::default(),
    )
}

/// Latents given to `decode`: a sequence of per-scale arrays, or one flat `[N, D]` array.
pub enum LatentInput<'py> {
    /// One float32 array `[N, c, h, w]` per scale, finest first.
    Scales(Vec<FloatArray<'py>>),
    /// All scales in one float32 array `[N, D]`.
    Flat(FloatArray<'py>),
}

impl<'py> LatentInput<'py> {
    /// Reads the latents of a model whose scales have `shapes` `[c, h, w]`.
    pub fn read(z: &Bound<'py, PyAny>, shapes: &[[usize; 3]]) -> PyResult<Self> {
        let dims: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
        let is_sequence = z.is_instance_of::<PyList>() || z.is_instance_of::<PyTuple>();
        if !is_sequence {
            return Ok(Self::Flat(FloatArray::read(z, "latents", &[dims])?));
        }
        let parts: Vec<Bound<'py, PyAny>> = z.try_iter()?.collect::<PyResult<_>>()?;
        if parts.len() != shapes.len() {
            return Err(PyValueError::new_err(format!(
                "latents: expected {} arrays, one per scale (as encode returns them), or one \
                 flat array [N, {dims}]; got {} arrays",
                shapes.len(),
                parts.len()
            )));
        }
        let scales = parts
            .iter()
            .zip(shapes)
            .enumerate()
            .map(|(i, (part, shape))| {
                FloatArray::read(part, &format!("latents of scale {i}"), shape)
            })
            .collect::<PyResult<Vec<_>>>()?;
        if let Some(bad) = scales.iter().find(|s| s.len() != scales[0].len()) {
            return Err(PyValueError::new_err(format!(
                "latents: the scales hold different numbers of examples ({} and {})",
                scales[0].len(),
                bad.len()
            )));
        }
        Ok(Self::Scales(scales))
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        match self {
            Self::Scales(scales) => scales[0].len(),
            Self::Flat(flat) => flat.len(),
        }
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A float64 array `[N]`.
pub fn vector_f64<'py>(py: Python<'py>, values: Vec<f64>) -> Bound<'py, PyArray1<f64>> {
    PyArray1::from_vec(py, values)
}

/// An array of `shape` from row-major `values`.
pub fn array<'py, T: Element>(
    py: Python<'py>,
    values: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    PyArray1::from_vec(py, values).reshape(shape.to_vec())
}

/// Images `[N, C, H, W]` in row-major `values` reordered to `[N, H, W, C]`.
pub fn to_channels_last<T: Copy + Default>(values: &[T], [c, h, w]: [usize; 3]) -> Vec<T> {
    let per_image = c * h * w;
    let mut out = vec![T::default(); values.len()];
    for (image, source) in out
        .chunks_exact_mut(per_image)
        .zip(values.chunks_exact(per_image))
    {
        for channel in 0..c {
            for pixel in 0..h * w {
                image[pixel * c + channel] = source[channel * h * w + pixel];
            }
        }
    }
    out
}

//! The safetensors header: an 8-byte little-endian length `n`, then `n` bytes of JSON naming
//! every tensor (dtype, shape, byte range in the data section) and optional string metadata.
//!
//! The header comes from a file that may be damaged or hostile, so nothing in it is trusted
//! before it is checked: the length is bounded (and checked against the file's size) before
//! any allocation, the JSON is parsed with duplicate names rejected, every shape's element
//! count and byte size are computed with overflow checks, every byte range must lie inside
//! the data section and match its dtype and shape exactly, and no two tensors may overlap.
//! Every error names the file and, where there is one, the tensor.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};

pub use safetensors::Dtype;

use crate::{Error, Result};

/// The largest header accepted: 100 MB, the limit of the reference implementation. A model's
/// header is a few hundred kilobytes; the bound keeps a hostile length from asking for memory.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor of a file, as its header describes it (after validation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Byte range inside the file's data section (which starts at [`Header::data_start`]).
    pub range: Range<u64>,
}

impl TensorInfo {
    /// The tensor's size in bytes.
    pub fn nbytes(&self) -> u64 {
        self.range.end - self.range.start
    }
}

/// A validated safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Tensors in the order of their bytes in the file.
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` strings (empty when the file has none).
    pub metadata: BTreeMap<String, String>,
    /// File offset of the data section: 8 + the header's length.
    pub data_start: u64,
    /// Length of the data section: the file's length minus `data_start`.
    pub data_len: u64,
    /// Tensor names to their index in `tensors`.
    by_name: BTreeMap<String, usize>,
}

impl Header {
    /// Reads the header length from a file's first 8 bytes and checks it against the limit
    /// and the file's length, before anything is allocated for it.
    pub fn json_len(path: &Path, prefix: &[u8], file_len: u64) -> Result<u64> {
        let bad = |message: String| bad(path, None, message);
        let Some(prefix) = prefix.get(..8) else {
            return Err(bad(format!(
                "the file is {file_len} bytes long, too short for a safetensors header (8-byte length first)"
            )));
        };
        let mut le = [0u8; 8];
        le.copy_from_slice(prefix);
        let n = u64::from_le_bytes(le);
        if n > MAX_HEADER_BYTES {
            return Err(bad(format!(
                "the header claims {n} bytes, more than the {MAX_HEADER_BYTES}-byte limit: not a safetensors file, or a damaged one"
            )));
        }
        if n.checked_add(8).is_none_or(|end| end > file_len) {
            return Err(bad(format!(
                "the header claims {n} bytes but the file has only {file_len} bytes: truncated"
            )));
        }
        if n < 2 {
            return Err(bad(format!(
                "the header is {n} bytes long: too short to hold a JSON object"
            )));
        }
        Ok(n)
    }

    /// Parses a file's header from its first bytes (the 8-byte length and the JSON; more
    /// bytes may follow), for a file of `file_len` bytes in all.
    pub fn from_prefix(path: &Path, bytes: &[u8], file_len: u64) -> Result<Header> {
        let n = Header::json_len(path, bytes, file_len)?;
        let json = bytes.get(8..8 + n as usize).ok_or_else(|| {
            bad(
                path,
                None,
                format!(
                    "the header claims {n} bytes but only {} follow",
                    bytes.len().saturating_sub(8)
                ),
            )
        })?;
        Header::parse(path, json, file_len)
    }

    /// Parses and validates the header's JSON (`json.len()` bytes after the 8-byte length) of a
    /// file of `file_len` bytes.
    pub fn parse(path: &Path, json: &[u8], file_len: u64) -> Result<Header> {
        let data_start = 8 + json.len() as u64;
        let data_len = file_len.checked_sub(data_start).ok_or_else(|| {
            bad(
                path,
                None,
                format!(
                    "the header ends at byte {data_start}, past the end of the {file_len}-byte file"
                ),
            )
        })?;
        if json.first() != Some(&b'{') {
            return Err(bad(
                path,
                None,
                "the header does not start with `{`: not a safetensors file".into(),
            ));
        }
        let mut de = serde_json::Deserializer::from_slice(json);
        let entries = de
            .deserialize_map(EntriesVisitor)
            .and_then(|e| de.end().map(|()| e))
            .map_err(|e| bad(path, None, format!("the header is not valid JSON: {e}")))?;
        let mut metadata = BTreeMap::new();
        let mut tensors = Vec::with_capacity(entries.len());
        let mut by_name = BTreeMap::new();
        for (name, value) in entries {
            if name == "__metadata__" {
                metadata = serde_json::from_value(value).map_err(|e| {
                    bad(
                        path,
                        None,
                        format!("`__metadata__` must map strings to strings: {e}"),
                    )
                })?;
                continue;
            }
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(bad(
                    path,
                    Some(&name),
                    "the name appears twice in the header".into(),
                ));
            }
            tensors.push(tensor_info(path, name, value, data_len)?);
        }
        // Sort by position and reject overlaps: a tensor's bytes belong to it alone.
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| (tensors[i].range.start, tensors[i].range.end));
        for pair in order.windows(2) {
            let (a, b) = (&tensors[pair[0]], &tensors[pair[1]]);
            if a.range.end > b.range.start {
                return Err(bad(
                    path,
                    Some(&b.name),
                    format!(
                        "its bytes {:?} overlap those of tensor `{}` {:?}",
                        b.range, a.name, a.range
                    ),
                ));
            }
        }
        let mut slots: Vec<Option<TensorInfo>> = tensors.into_iter().map(Some).collect();
        let tensors: Vec<TensorInfo> = order.iter().filter_map(|&i| slots[i].take()).collect();
        for (i, t) in tensors.iter().enumerate() {
            by_name.insert(t.name.clone(), i);
        }
        Ok(Header {
            tensors,
            metadata,
            data_start,
            data_len,
            by_name,
        })
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

fn bad(path: &Path, tensor: Option<&str>, message: String) -> Error {
    Error::Safetensors {
        path: path.to_path_buf(),
        tensor: tensor.map(str::to_owned),
        message,
    }
}

/// Checks one tensor entry: dtype known, shape × dtype size == byte length, range in the data
/// section.
fn tensor_info(
    path: &Path,
    name: String,
    value: serde_json::Value,
    data_len: u64,
) -> Result<TensorInfo> {
    #[derive(serde::Deserialize)]
    struct Raw {
        dtype: String,
        shape: Vec<u64>,
        data_offsets: (u64, u64),
    }
    let raw: Raw = serde_json::from_value(value).map_err(|e| {
        bad(
            path,
            Some(&name),
            format!(
                "expected {{\"dtype\": str, \"shape\": [int], \"data_offsets\": [int, int]}}: {e}"
            ),
        )
    })?;
    let dtype: Dtype = serde_json::from_value(serde_json::Value::String(raw.dtype.clone()))
        .map_err(|_| bad(path, Some(&name), format!("unknown dtype {:?}", raw.dtype)))?;
    let overflow = || {
        bad(
            path,
            Some(&name),
            format!("shape {:?} is too large", raw.shape),
        )
    };
    let mut elements: u64 = 1;
    let mut shape = Vec::with_capacity(raw.shape.len());
    for &d in &raw.shape {
        elements = elements.checked_mul(d).ok_or_else(overflow)?;
        shape.push(usize::try_from(d).map_err(|_| overflow())?);
    }
    let bits = elements
        .checked_mul(dtype.bitsize() as u64)
        .ok_or_else(overflow)?;
    if bits % 8 != 0 {
        return Err(bad(
            path,
            Some(&name),
            format!("{elements} elements of {dtype:?} do not fill whole bytes"),
        ));
    }
    let (start, end) = raw.data_offsets;
    if start > end {
        return Err(bad(
            path,
            Some(&name),
            format!("data_offsets [{start}, {end}] run backwards"),
        ));
    }
    if end - start != bits / 8 {
        return Err(bad(
            path,
            Some(&name),
            format!(
                "data_offsets [{start}, {end}] hold {} bytes but shape {:?} of {dtype:?} needs {}",
                end - start,
                raw.shape,
                bits / 8
            ),
        ));
    }
    if end > data_len {
        return Err(bad(
            path,
            Some(&name),
            format!(
                "data_offsets [{start}, {end}] reach past the data section's {data_len} bytes: the file is truncated or the header is wrong"
            ),
        ));
    }
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        range: start..end,
    })
}

/// The header's top-level entries in file order, duplicates kept (so that they can be
/// reported rather than silently overwritten, as a map would do).
struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Vec<(String, serde_json::Value)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of tensors")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
            entries.push(entry);
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file_of(json: &str, data: usize) -> Vec<u8> {
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes.resize(bytes.len() + data, 0);
        bytes
    }

    fn parse(json: &str, data: usize) -> Result<Header> {
        let bytes = file_of(json, data);
        Header::from_prefix(Path::new("m.safetensors"), &bytes, bytes.len() as u64)
    }

    fn message(r: Result<Header>) -> String {
        r.expect_err("must be rejected").to_string()
    }

    #[test]
    fn a_valid_header_is_read_in_byte_order() {
        let h = parse(
            r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"__metadata__":{"k":"v"},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
            12,
        )
        .expect("valid");
        assert_eq!(h.tensors[0].name, "a");
        assert_eq!(h.tensors[1].range, 4..12);
        assert_eq!(h.get("b").map(|t| t.shape.clone()), Some(vec![2]));
        assert_eq!(h.metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(h.names().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn errors_name_the_file_and_the_tensor() {
        let m = message(parse(
            r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            8,
        ));
        assert!(
            m.contains("m.safetensors") && m.contains("`w`") && m.contains("needs 12"),
            "{m}"
        );
    }

    #[test]
    fn a_huge_header_length_is_refused_before_allocation() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let m = message(Header::from_prefix(Path::new("x"), &bytes, 10));
        assert!(m.contains("limit"), "{m}");
        let m = message(Header::from_prefix(
            Path::new("x"),
            &1000u64.to_le_bytes(),
            500,
        ));
        assert!(m.contains("truncated"), "{m}");
    }

    #[test]
    fn overlaps_duplicates_and_out_of_range_offsets_are_refused() {
        let m = message(parse(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
            6,
        ));
        assert!(m.contains("overlap"), "{m}");
        let m = message(parse(
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
            2,
        ));
        assert!(m.contains("twice"), "{m}");
        let m = message(parse(
            r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}"#,
            4,
        ));
        assert!(m.contains("past the data section"), "{m}");
        let m = message(parse(
            r#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
            8,
        ));
        assert!(m.contains("too large"), "{m}");
        let m = message(parse(
            r#"{"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}}"#,
            1,
        ));
        assert!(m.contains("unknown dtype"), "{m}");
        let m = message(parse(r#"{"a":1}"#, 0));
        assert!(m.contains("`a`"), "{m}");
        let m = message(parse("[1,2]", 0));
        assert!(m.contains("does not start"), "{m}");
        let m = message(parse(r#"{"a":"#, 0));
        assert!(m.contains("not valid JSON"), "{m}");
    }

    #[test]
    fn empty_tensors_may_share_an_offset() {
        let h = parse(
            r#"{"e":{"dtype":"F16","shape":[0,3],"data_offsets":[0,0]},"f":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}"#,
            2,
        )
        .expect("valid");
        assert_eq!(h.get("e").map(TensorInfo::nbytes), Some(0));
    }

    proptest! {
        /// Any bytes at all give a header or an error, never a panic; an accepted header's
        /// ranges lie inside the file and do not overlap.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(h) = Header::from_prefix(Path::new("f"), &bytes, bytes.len() as u64) {
                let mut end = 0;
                for t in &h.tensors {
                    prop_assert!(t.range.start >= end && t.range.end <= h.data_len);
                    end = t.range.end;
                }
            }
        }

        /// Headers made of well-formed entries with arbitrary shapes and offsets: accepted
        /// exactly when every size matches and nothing overlaps.
        #[test]
        fn generated_headers_are_judged_correctly(
            entries in proptest::collection::vec((0usize..3, proptest::collection::vec(0u64..5, 0..3), 0u64..40), 1..5),
            data in 0usize..64,
        ) {
            let dtypes = [("U8", 1u64), ("BF16", 2), ("F32", 4)];
            let mut json = String::from("{");
            let mut ranges = Vec::new();
            for (i, (d, shape, start)) in entries.iter().enumerate() {
                let (name, size) = dtypes[*d];
                let n: u64 = shape.iter().product::<u64>() * size;
                ranges.push((*start, start + n));
                if i > 0 { json.push(','); }
                json.push_str(&format!(
                    r#""t{i}":{{"dtype":"{name}","shape":{shape:?},"data_offsets":[{start},{}]}}"#,
                    start + n
                ));
            }
            json.push('}');
            let mut sorted = ranges.clone();
            sorted.sort();
            let fits = sorted.iter().all(|r| r.1 <= data as u64)
                && sorted.windows(2).all(|w| w[0].1 <= w[1].0);
            prop_assert_eq!(parse(&json, data).is_ok(), fits);
        }
    }
}

//! Shard schema v1: the Arrow schema of a track shard, built from a [`ShardSpec`].
//!
//! `schemas/shard-v1.json` is the machine-readable form and `schemas/README.md` the page
//! for Python users; a test keeps both in step with this file.

use crate::clip::ShardSpec;
use arrow::datatypes::{DataType, Field, Schema};
use std::collections::HashMap;
use std::sync::Arc;

/// Written as `major.minor`; readers accept any minor of their major, since minors only add.
pub const SCHEMA_VERSION: &str = "1.0";
pub const SCHEMA_MAJOR: u32 = 1;
/// File metadata keys (Parquet key-value metadata and Arrow schema metadata).
pub const KEY_VERSION: &str = "mosic.schema_version";
pub const KEY_SPEC: &str = "mosic.spec";
/// Arrow's canonical fixed-shape tensor, so pyarrow hands out n-d arrays directly.
pub const TENSOR_EXTENSION: &str = "arrow.fixed_shape_tensor";

/// Column names, in file order.
pub mod col {
    pub const DATASET: &str = "dataset";
    pub const VIDEO_ID: &str = "video_id";
    pub const CLIP_INDEX: &str = "clip_index";
    pub const FRAME_INDICES: &str = "frame_indices";
    pub const SOURCE_FPS: &str = "source_fps";
    pub const WIDTH: &str = "width";
    pub const HEIGHT: &str = "height";
    pub const FRAMES: &str = "frames";
    pub const QUERY_FRAME: &str = "query_frame";
    pub const GRID_SIZE: &str = "grid_size";
    pub const QUERIES: &str = "queries";
    pub const TRACKS: &str = "tracks";
    pub const VISIBILITY: &str = "visibility";
    pub const TRACKER: &str = "tracker";
    pub const TRACKER_SHA256: &str = "tracker_sha256";
    pub const TRACKER_PARAMS: &str = "tracker_params";
}

fn item(dt: DataType) -> Arc<Field> {
    // Nullable items: pyarrow only recognises the tensor extension over a nullable child.
    Arc::new(Field::new("item", dt, true))
}

pub fn fixed_list(dt: DataType, len: usize) -> DataType {
    DataType::FixedSizeList(item(dt), len as i32)
}

fn tensor(name: &str, dt: DataType, shape: &[usize]) -> Field {
    let len = shape.iter().product();
    let meta = HashMap::from([
        ("ARROW:extension:name".to_string(), TENSOR_EXTENSION.to_string()),
        (
            "ARROW:extension:metadata".to_string(),
            format!("{{\"shape\":{shape:?}}}").replace(' ', ""),
        ),
    ]);
    Field::new(name, fixed_list(dt, len), false).with_metadata(meta)
}

/// The Arrow schema of a shard with the given spec, file metadata included.
pub fn arrow_schema(spec: &ShardSpec) -> Schema {
    let (t, n) = (spec.t(), spec.num_points());
    let fields = vec![
        Field::new(col::DATASET, DataType::Utf8, false),
        Field::new(col::VIDEO_ID, DataType::Utf8, false),
        Field::new(col::CLIP_INDEX, DataType::UInt32, false),
        Field::new(col::FRAME_INDICES, fixed_list(DataType::UInt32, t), false),
        Field::new(col::SOURCE_FPS, DataType::Float32, false),
        Field::new(col::WIDTH, DataType::UInt16, false),
        Field::new(col::HEIGHT, DataType::UInt16, false),
        Field::new(col::FRAMES, fixed_list(DataType::Binary, t), false),
        Field::new(col::QUERY_FRAME, DataType::UInt16, false),
        Field::new(col::GRID_SIZE, DataType::UInt16, false),
        tensor(col::QUERIES, DataType::Float32, &[n, 2]),
        tensor(col::TRACKS, DataType::Float32, &[t, n, 2]),
        tensor(col::VISIBILITY, DataType::UInt8, &[t, n]),
        Field::new(col::TRACKER, DataType::Utf8, false),
        Field::new(col::TRACKER_SHA256, DataType::Utf8, false),
        Field::new(col::TRACKER_PARAMS, DataType::Utf8, false),
    ];
    Schema::new_with_metadata(fields, file_metadata(spec))
}

pub fn file_metadata(spec: &ShardSpec) -> HashMap<String, String> {
    HashMap::from([
        (KEY_VERSION.to_string(), SCHEMA_VERSION.to_string()),
        (KEY_SPEC.to_string(), serde_json::to_string(spec).expect("spec serialises")),
    ])
}

/// Parses "major.minor"; `None` when malformed.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A compact, stable spelling of an Arrow type, used to compare the schema with
/// `schemas/shard-v1.json`.
pub fn type_name(dt: &DataType) -> String {
    match dt {
        DataType::FixedSizeList(f, n) => {
            format!("fixed_size_list<{}>[{n}]", type_name(f.data_type()))
        }
        DataType::Utf8 => "string".into(),
        DataType::Binary => "binary".into(),
        DataType::UInt8 => "uint8".into(),
        DataType::UInt16 => "uint16".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::Float32 => "float32".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::TrackerInfo;

    fn spec() -> ShardSpec {
        ShardSpec {
            frames_per_clip: 12,
            grid_size: 16,
            width: 224,
            height: 224,
            query_frame: 0,
            tracker: TrackerInfo {
                name: "t".into(),
                model_sha256: String::new(),
                params: serde_json::json!({}),
            },
        }
    }

    /// The JSON definition in schemas/ is what Python users read; it must describe the
    /// schema this code writes, column by column.
    #[test]
    fn json_definition_matches_code() {
        let def: serde_json::Value =
            serde_json::from_str(include_str!("../schemas/shard-v1.json")).expect("valid JSON");
        assert_eq!(def["version"], SCHEMA_VERSION);
        let cols = def["columns"].as_array().expect("columns");
        let schema = arrow_schema(&spec());
        assert_eq!(cols.len(), schema.fields().len());
        let (t, n) = (12usize, 256usize);
        for (c, f) in cols.iter().zip(schema.fields()) {
            assert_eq!(c["name"], f.name().as_str());
            let shape: Vec<usize> = c["shape"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|d| match d.as_str() {
                            Some("T") => t,
                            Some("N") => n,
                            _ => d.as_u64().expect("dim") as usize,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let elem = c["type"].as_str().expect("type");
            let expected = if shape.is_empty() {
                elem.to_string()
            } else {
                format!("fixed_size_list<{elem}>[{}]", shape.iter().product::<usize>())
            };
            assert_eq!(type_name(f.data_type()), expected, "column {}", f.name());
            let is_tensor = f.metadata().get("ARROW:extension:name").map(String::as_str)
                == Some(TENSOR_EXTENSION);
            assert_eq!(c["tensor"].as_bool().unwrap_or(false), is_tensor, "column {}", f.name());
            if is_tensor {
                let m = &f.metadata()["ARROW:extension:metadata"];
                assert_eq!(m, &format!("{{\"shape\":{shape:?}}}").replace(' ', ""));
            }
        }
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("1.0"), Some((1, 0)));
        assert_eq!(parse_version("12.3"), Some((12, 3)));
        assert_eq!(parse_version("x"), None);
    }
}

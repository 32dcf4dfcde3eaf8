//! Schemas for the fields that hold free-form JSON (JSON Schemas, Kubernetes resource
//! requirements, tolerations): Kubernetes keeps their contents only when a structural
//! schema says so.

use schemars::{Schema, SchemaGenerator, json_schema};

pub fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

pub fn free_form_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

//! JSON object helpers shared by the store (pool settings over instance
//! settings) and the providers (defaults under settings).

use serde_json::Value;

/// `base` with every top-level key of `over` set over it (non-objects count as empty).
pub fn merged(base: &Value, over: &Value) -> Value {
    let mut out = base.as_object().cloned().unwrap_or_default();
    for (k, v) in over.as_object().into_iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_keys_of_over_win() {
        let m =
            merged(&json!({"session": "ins_1", "base_url": "old"}), &json!({"base_url": "http://w", "api_key": "k"}));
        assert_eq!(m, json!({"session": "ins_1", "base_url": "http://w", "api_key": "k"}));
        assert_eq!(merged(&json!(null), &json!({"a": 1})), json!({"a": 1}));
    }
}

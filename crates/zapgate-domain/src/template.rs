//! Tenant message templates with named variables:
//! `Olá {{name}}, sua fatura de {{amount}} vence em {{due_date}}`, or a
//! Cloud API (provider) template by name and language whose component
//! texts hold the variables. Parsed when created (so a broken template is
//! refused then, not at send time) and rendered with the variables it names.

use crate::ValidationError;
use crate::message::{MessageContent, Template};
use std::collections::BTreeMap;

pub const MAX_TEMPLATE_CHARS: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Var(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextTemplate {
    parts: Vec<Part>,
}

impl TextTemplate {
    pub fn parse(body: &str) -> Result<Self, ValidationError> {
        let bad = |m: String| ValidationError::new("body", m);
        if body.trim().is_empty() {
            return Err(bad("must not be empty".into()));
        }
        if body.chars().count() > MAX_TEMPLATE_CHARS {
            return Err(bad(format!("must be at most {MAX_TEMPLATE_CHARS} characters")));
        }
        Self::fragment(body, "body")
    }

    /// Any text with `{{variables}}` (empty, or none, allowed): one string
    /// inside a Cloud API template's components. `field` names it in errors.
    fn fragment(body: &str, field: &str) -> Result<Self, ValidationError> {
        let bad = |m: String| ValidationError::new(field, m);
        let mut parts = Vec::new();
        let mut rest = body;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| bad("a {{ is never closed with }}".into()))?;
            let name = after[..close].trim();
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(bad(format!(
                    "{{{{{name}}}}} is not a variable name (lower-case letters, digits and _, starting with a letter)"
                )));
            }
            parts.push(Part::Var(name.to_owned()));
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            return Err(bad("a }} has no matching {{".into()));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The variables the template names, sorted, once each.
    pub fn variables(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.parts.iter().filter_map(|p| if let Part::Var(n) = p { Some(n.clone()) } else { None }).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Renders with the variables the template names, taken from `values`,
    /// which may hold more (an audience row carries its dates and ids too).
    pub fn render_from(&self, values: &BTreeMap<String, String>) -> Result<String, ValidationError> {
        let names = self.variables();
        let own = values.iter().filter(|(k, _)| names.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        self.render(&own)
    }

    /// Renders with `values`; every named variable must be given, and
    /// nothing else (a typo in a name is an error, not a silent blank).
    pub fn render(&self, values: &BTreeMap<String, String>) -> Result<String, ValidationError> {
        let out = self.fill(values)?;
        if out.chars().count() > crate::message::MAX_TEXT_CHARS {
            return Err(ValidationError::new("variables", "the rendered text is longer than 4096 characters"));
        }
        Ok(out)
    }

    fn fill(&self, values: &BTreeMap<String, String>) -> Result<String, ValidationError> {
        let names = self.variables();
        if let Some(missing) = names.iter().find(|n| !values.contains_key(*n)) {
            return Err(ValidationError::new(format!("variables.{missing}"), "is required by the template"));
        }
        if let Some(extra) = values.keys().find(|k| !names.contains(k)) {
            return Err(ValidationError::new(format!("variables.{extra}"), "is not a variable of the template"));
        }
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(n) => out.push_str(&values[n]),
            }
        }
        Ok(out)
    }
}

/// What a tenant template sends: its text as a text message, or a Cloud
/// API template with every component string filled in.
#[derive(Debug, Clone)]
pub enum TenantTemplate {
    Text(TextTemplate),
    Cloud(CloudTemplate),
}

/// A Cloud API template (name, language, components) whose component
/// strings may hold `{{variables}}`.
#[derive(Debug, Clone)]
pub struct CloudTemplate {
    template: Template,
    /// Every string inside `components`, by its JSON pointer, parsed.
    strings: Vec<(String, TextTemplate)>,
}

impl CloudTemplate {
    pub fn parse(value: &serde_json::Value) -> Result<Self, ValidationError> {
        let field = "cloud_template";
        let template: Template = serde_json::from_value(value.clone()).map_err(|e| {
            ValidationError::new(field, format!("is not a Cloud API template (name, language, components): {e}"))
        })?;
        if template.name.trim().is_empty() || template.language.code.trim().is_empty() {
            return Err(ValidationError::new(field, "needs a name and a language code"));
        }
        let mut strings = Vec::new();
        for (i, c) in template.components.iter().enumerate() {
            collect_strings(c, &format!("/{i}"), &mut strings)?;
        }
        let t = Self { template, strings };
        // Rendered with every variable set, it must be a valid message.
        let sample: BTreeMap<String, String> = t.variables().into_iter().map(|v| (v, "x".to_owned())).collect();
        t.render(&sample)?;
        Ok(t)
    }

    pub fn variables(&self) -> Vec<String> {
        let mut v: Vec<String> = self.strings.iter().flat_map(|(_, t)| t.variables()).collect();
        v.sort();
        v.dedup();
        v
    }

    fn render(&self, values: &BTreeMap<String, String>) -> Result<MessageContent, ValidationError> {
        let mut components = serde_json::Value::Array(self.template.components.clone());
        for (pointer, t) in &self.strings {
            if let Some(slot) = components.pointer_mut(pointer) {
                *slot = serde_json::Value::String(t.render_from(values)?);
            }
        }
        let serde_json::Value::Array(components) = components else { unreachable!("built as an array") };
        let content = MessageContent::Template { template: Template { components, ..self.template.clone() } };
        content.validate()?;
        Ok(content)
    }
}

fn collect_strings(
    v: &serde_json::Value,
    pointer: &str,
    out: &mut Vec<(String, TextTemplate)>,
) -> Result<(), ValidationError> {
    match v {
        serde_json::Value::String(s) if s.contains("{{") || s.contains("}}") => {
            out.push((pointer.to_owned(), TextTemplate::fragment(s, &format!("cloud_template.components{pointer}"))?));
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_strings(item, &format!("{pointer}/{i}"), out)?;
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map {
                let key = k.replace('~', "~0").replace('/', "~1");
                collect_strings(item, &format!("{pointer}/{key}"), out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

impl TenantTemplate {
    pub fn variables(&self) -> Vec<String> {
        match self {
            TenantTemplate::Text(t) => t.variables(),
            TenantTemplate::Cloud(t) => t.variables(),
        }
    }

    /// Renders with exactly the variables the template names (a send that
    /// gives its own `variables`: a typo is an error).
    pub fn render(&self, values: &BTreeMap<String, String>) -> Result<MessageContent, ValidationError> {
        let names = self.variables();
        if let Some(missing) = names.iter().find(|n| !values.contains_key(*n)) {
            return Err(ValidationError::new(format!("variables.{missing}"), "is required by the template"));
        }
        if let Some(extra) = values.keys().find(|k| !names.contains(k)) {
            return Err(ValidationError::new(format!("variables.{extra}"), "is not a variable of the template"));
        }
        self.render_from(values)
    }

    /// Renders with the variables it names, taken from `values`, which may
    /// hold more (an audience row carries its dates and ids too).
    pub fn render_from(&self, values: &BTreeMap<String, String>) -> Result<MessageContent, ValidationError> {
        match self {
            TenantTemplate::Text(t) => {
                let body = t.render_from(values)?;
                Ok(MessageContent::Text { text: crate::message::Text { body, preview_url: false } })
            }
            TenantTemplate::Cloud(t) => {
                if let Some(missing) = t.variables().into_iter().find(|n| !values.contains_key(n)) {
                    return Err(ValidationError::new(format!("variables.{missing}"), "is required by the template"));
                }
                t.render(values)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn renders_the_billing_reminder() {
        let t = TextTemplate::parse("Olá {{name}}, sua fatura de {{amount}} vence em {{ due_date }}.").unwrap();
        assert_eq!(t.variables(), ["amount", "due_date", "name"]);
        let text = t.render(&vars(&[("name", "Ana"), ("amount", "R$ 10"), ("due_date", "05/12")])).unwrap();
        assert_eq!(text, "Olá Ana, sua fatura de R$ 10 vence em 05/12.");
    }

    #[test]
    fn broken_templates_are_refused_when_created() {
        for body in ["", "Olá {{name", "Olá {{Name}}", "{{1x}}", "oops }}", "{{}}"] {
            assert!(TextTemplate::parse(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn a_cloud_template_fills_its_component_texts() {
        let raw = serde_json::json!({"name": "billing_reminder", "language": {"code": "pt_BR"}, "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "{{name}}"}, {"type": "text", "text": "R$ {{amount}}"}]},
            {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "{{invoice}}"}]}
        ]});
        let t = TenantTemplate::Cloud(CloudTemplate::parse(&raw).unwrap());
        assert_eq!(t.variables(), ["amount", "invoice", "name"]);
        let values = vars(&[("name", "Ana"), ("amount", "10"), ("invoice", "F-1"), ("due_date", "2026-12-10")]);
        let MessageContent::Template { template } = t.render_from(&values).unwrap() else { panic!("a template") };
        assert_eq!(template.name, "billing_reminder");
        assert_eq!(template.components[0]["parameters"][1]["text"], "R$ 10");
        assert_eq!(template.components[1]["parameters"][0]["text"], "F-1");
        assert_eq!(template.components[1]["index"], "0", "other fields as given");
        assert_eq!(t.render(&values).unwrap_err().field, "variables.due_date", "a send names exactly its variables");
        assert_eq!(t.render_from(&vars(&[("name", "Ana")])).unwrap_err().field, "variables.amount");
    }

    #[test]
    fn broken_cloud_templates_are_refused_when_created() {
        for raw in [
            serde_json::json!({"name": "x"}),
            serde_json::json!({"name": "", "language": {"code": "pt_BR"}}),
            serde_json::json!({"name": "x", "language": {"code": "pt_BR"}, "components": [{"type": "body", "parameters": [{"type": "text", "text": "{{Name}}"}]}]}),
        ] {
            assert!(CloudTemplate::parse(&raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn missing_or_unknown_variables_are_named() {
        let t = TextTemplate::parse("Oi {{name}}").unwrap();
        assert_eq!(t.render(&vars(&[])).unwrap_err().field, "variables.name");
        assert_eq!(t.render(&vars(&[("name", "a"), ("nmae", "b")])).unwrap_err().field, "variables.nmae");
    }
}

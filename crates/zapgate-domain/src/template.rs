//! Tenant message templates with named variables:
//! `Olá {{name}}, sua fatura de {{amount}} vence em {{due_date}}`.
//! Parsed when created (so a broken template is refused then, not at send
//! time) and rendered with exactly the variables it names.

use crate::ValidationError;
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
        if out.chars().count() > crate::message::MAX_TEXT_CHARS {
            return Err(ValidationError::new("variables", "the rendered text is longer than 4096 characters"));
        }
        Ok(out)
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
    fn missing_or_unknown_variables_are_named() {
        let t = TextTemplate::parse("Oi {{name}}").unwrap();
        assert_eq!(t.render(&vars(&[])).unwrap_err().field, "variables.name");
        assert_eq!(t.render(&vars(&[("name", "a"), ("nmae", "b")])).unwrap_err().field, "variables.nmae");
    }
}

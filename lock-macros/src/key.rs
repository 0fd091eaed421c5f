//! The `key` template: literal text with `{param}` / `{param.field}` placeholders and `{{`, `}}`
//! for literal braces.

/// One piece of a parsed template.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    Text(String),
    /// A parameter, with the fields after it: `{job.tenant.id}` is `["job", "tenant", "id"]`.
    Field(Vec<String>),
}

/// Splits a template into pieces, or says what is wrong with it.
pub(crate) fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = template.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let Some(close) = template[at..].find('}') else {
                    return Err(format!(
                        "unclosed `{{` in `key` at byte {at}; close it with `}}`, or write `{{{{` for a literal brace"
                    ));
                };
                let inner = &template[at + 1..at + close];
                if inner.contains('{') {
                    return Err(format!(
                        "unclosed `{{` in `key` at byte {at}; close it with `}}`, or write `{{{{` for a literal brace"
                    ));
                }
                let path: Vec<String> = inner.split('.').map(|s| s.trim().to_owned()).collect();
                let as_expression = "write the key as an expression instead: `key = format!(...)`";
                if inner.contains(':') {
                    return Err(format!(
                        "`{{{inner}}}` in `key`: a format spec (`:04`, `:?`) is not a placeholder; {as_expression}"
                    ));
                }
                if inner.contains('(') {
                    return Err(format!(
                        "`{{{inner}}}` in `key`: a method call is not a placeholder (placeholders name parameters and their fields); {as_expression}"
                    ));
                }
                // A tuple field (`{pair.0}`) after the parameter's name.
                let field = |(i, s): (usize, &String)| {
                    is_ident(s) || (i > 0 && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                };
                if !path.iter().enumerate().all(field) {
                    return Err(format!(
                        "`{{{inner}}}` in `key` is not a parameter name; placeholders look like `{{tenant}}` or `{{job.id}}`"
                    ));
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Field(path));
                // Skip to the closing brace.
                for (i, _) in chars.by_ref() {
                    if i == at + close {
                        break;
                    }
                }
            }
            '}' => {
                return Err(format!(
                    "unmatched `}}` in `key` at byte {at}; write `}}}}` for a literal brace"
                ));
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn is_ident(s: &str) -> bool {
    // A raw identifier (`r#type`) names a parameter or field written that way.
    let s = s.strip_prefix("r#").unwrap_or(s);
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::{parse_template, Piece};

    fn field(path: &[&str]) -> Piece {
        Piece::Field(path.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn tuple_fields_are_placeholders_and_specs_and_calls_are_explained() {
        assert_eq!(
            parse_template("{pair.0}").unwrap(),
            vec![field(&["pair", "0"])]
        );
        assert!(parse_template("{0}").is_err());
        assert!(parse_template("{id:04}")
            .unwrap_err()
            .contains("format spec"));
        assert!(parse_template("{job.name()}")
            .unwrap_err()
            .contains("method call"));
    }

    #[test]
    fn raw_identifiers_are_placeholders() {
        assert_eq!(
            parse_template("{r#type}:{job.r#ref}").unwrap(),
            vec![
                field(&["r#type"]),
                Piece::Text(":".into()),
                field(&["job", "r#ref"])
            ]
        );
        assert!(parse_template("{r#}").is_err());
    }

    #[test]
    fn text_and_placeholders() {
        assert_eq!(
            parse_template("invoices:{tenant_id}:{job.kind}").unwrap(),
            vec![
                Piece::Text("invoices:".into()),
                field(&["tenant_id"]),
                Piece::Text(":".into()),
                field(&["job", "kind"]),
            ]
        );
        assert_eq!(
            parse_template("{self.id}").unwrap(),
            vec![field(&["self", "id"])]
        );
        assert_eq!(
            parse_template("plain").unwrap(),
            vec![Piece::Text("plain".into())]
        );
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(
            parse_template("a{{b}}{c}").unwrap(),
            vec![Piece::Text("a{b}".into()), field(&["c"])]
        );
    }

    #[test]
    fn malformed_templates_say_why() {
        assert!(parse_template("jobs:{tenant")
            .unwrap_err()
            .contains("unclosed `{`"));
        assert!(parse_template("jobs:{a{b}")
            .unwrap_err()
            .contains("unclosed `{`"));
        assert!(parse_template("jobs:}")
            .unwrap_err()
            .contains("unmatched `}`"));
        assert!(parse_template("jobs:{}")
            .unwrap_err()
            .contains("not a parameter name"));
        assert!(parse_template("jobs:{a-b}")
            .unwrap_err()
            .contains("not a parameter name"));
        assert!(parse_template("jobs:{1x}")
            .unwrap_err()
            .contains("not a parameter name"));
    }
}

//! The attribute's arguments, each parsed into its own type and kept with its spans: durations
//! in milliseconds, `on_busy` and `on_lost` as enums. What depends on several arguments or on
//! the fn (templates, combinations) is checked in `valid.rs`.

use proc_macro2::{Ident, Span, TokenStream};
use syn::meta::ParseNestedMeta;
use syn::{Expr, ExprLit, Lit, LitBool, LitInt, LitStr};

/// One argument: its name token (for "repeated"/"unknown" errors) and its value.
pub(crate) struct Arg<T> {
    pub(crate) name: Ident,
    pub(crate) value: T,
}

/// A duration argument: milliseconds, and the literal it was written as (for spans and
/// messages).
pub(crate) struct Millis {
    pub(crate) ms: u64,
    pub(crate) lit: LitStr,
}

/// `on_busy`.
#[derive(Clone, Copy)]
pub(crate) enum OnBusy {
    Error,
    /// With the span of `"skip"`, where a `T` without `Default` is reported.
    Skip(Span),
}

/// `on_lost`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnLost {
    Abort,
    Continue,
}

/// `key = "template"` or `key = <expression>`.
pub(crate) enum KeyArg {
    Template(LitStr),
    Expr(Expr),
}

#[derive(Default)]
pub(crate) struct Args {
    pub(crate) key: Option<Arg<KeyArg>>,
    pub(crate) ttl: Option<Arg<Millis>>,
    pub(crate) wait: Option<Arg<Millis>>,
    pub(crate) on_busy: Option<Arg<OnBusy>>,
    pub(crate) auto_extend: Option<Arg<LitBool>>,
    pub(crate) fair: Option<Arg<LitBool>>,
    pub(crate) shared: Option<Arg<LitBool>>,
    pub(crate) reentrant: Option<Arg<LitBool>>,
    /// `permits = 3`: the value, checked to be at least 1, and its literal.
    pub(crate) permits: Option<Arg<(u32, LitInt)>>,
    pub(crate) on_lost: Option<Arg<OnLost>>,
    pub(crate) min_hold: Option<Arg<Millis>>,
    pub(crate) max_hold: Option<Arg<Millis>>,
    pub(crate) manager: Option<Arg<Expr>>,
    pub(crate) guard: Option<Arg<Ident>>,
    pub(crate) krate: Option<Arg<LitStr>>,
    /// Every argument name written, well-formed or not, and the names a misspelt one was
    /// taken for: an argument that has an error of its own is not reported missing as well.
    pub(crate) mentioned: Vec<String>,
    /// A syntax error stopped the parse: what came after it is unknown.
    pub(crate) unreadable: bool,
}

/// The known argument names, for "did you mean".
const KNOWN: [&str; 15] = [
    "key",
    "ttl",
    "wait",
    "on_busy",
    "auto_extend",
    "on_lost",
    "min_hold",
    "max_hold",
    "fair",
    "shared",
    "reentrant",
    "permits",
    "manager",
    "guard",
    "crate",
];

/// The known name closest to `name`, if it is a likely misspelling (edit distance at most 2,
/// and less than the name's length).
fn did_you_mean(name: &str) -> Option<&'static str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cost = usize::from(ca != *cb);
                let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + cost);
                prev = row[j + 1];
                row[j + 1] = next;
            }
        }
        row[b.len()]
    }
    KNOWN
        .iter()
        .map(|known| (distance(name, known), *known))
        .filter(|(d, known)| *d <= 2 && *d < name.len().min(known.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, known)| known)
}

pub(crate) const NAMES: &str = "`key`, `ttl`, `wait`, `on_busy`, `auto_extend`, `on_lost`, `min_hold`, `max_hold`, `fair`, `shared`, `reentrant`, `permits`, `manager`, `guard`, `crate`";

/// Adds `error` to `errors`.
pub(crate) fn push(errors: &mut Option<syn::Error>, error: syn::Error) {
    match errors {
        Some(all) => all.combine(error),
        None => *errors = Some(error),
    }
}

fn store<T>(slot: &mut Option<Arg<T>>, name: Ident, value: T, errors: &mut Option<syn::Error>) {
    if slot.is_some() {
        push(
            errors,
            syn::Error::new(name.span(), format!("`{name}` is given twice; remove one")),
        );
    } else {
        *slot = Some(Arg { name, value });
    }
}

/// What a `macro_rules!` fragment holds: `$key:expr`, `$ttl:literal` and the like arrive
/// wrapped in an invisible group (`Expr::Group`), which would otherwise make a template an
/// expression (its placeholders never rendered) and a literal argument "not a literal".
fn ungrouped(mut value: Expr) -> Expr {
    while let Expr::Group(group) = value {
        value = *group.expr;
    }
    value
}

fn string_literal(
    value: Expr,
    name: &Ident,
    example: &str,
    errors: &mut Option<syn::Error>,
) -> Option<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s),
        other => {
            push(
                errors,
                syn::Error::new_spanned(
                    other,
                    format!("`{name}` takes a string literal: `{name} = {example}`"),
                ),
            );
            None
        }
    }
}

/// A duration literal in milliseconds, or its error at the literal.
fn millis(name: &Ident, lit: LitStr, errors: &mut Option<syn::Error>) -> Option<Millis> {
    match crate::duration::parse_millis(&lit.value()) {
        Ok(ms) => Some(Millis { ms, lit }),
        Err(msg) => {
            push(
                errors,
                syn::Error::new(lit.span(), format!("`{name}`: {msg}")),
            );
            None
        }
    }
}

/// Which of `options` the literal is, or its error at the literal.
fn one_of(
    name: &Ident,
    lit: &LitStr,
    options: [&'static str; 2],
    errors: &mut Option<syn::Error>,
) -> Option<&'static str> {
    let value = lit.value();
    let found = options.iter().find(|o| **o == value).copied();
    if found.is_none() {
        push(
            errors,
            syn::Error::new(
                lit.span(),
                format!(
                    "`{name}` must be \"{}\" or \"{}\", not \"{value}\"",
                    options[0], options[1]
                ),
            ),
        );
    }
    found
}

/// Parses the attribute's arguments. Syntax errors abort; every problem with a well-formed
/// argument is collected so one compile shows them all.
pub(crate) fn parse(tokens: TokenStream) -> (Args, Option<syn::Error>) {
    let mut args = Args::default();
    let mut errors = None;
    let parser = syn::meta::parser(|meta: ParseNestedMeta<'_>| {
        let Some(name) = meta.path.get_ident().cloned() else {
            return Err(meta.error(format!("unknown argument; expected one of {NAMES}")));
        };
        // Recorded before the value is read: an argument with a syntax error is not also
        // reported missing.
        args.mentioned.push(name.to_string());
        let value = ungrouped(meta.value()?.parse()?);
        let e = &mut errors;
        match name.to_string().as_str() {
            "key" => {
                let key = match value {
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(s), ..
                    }) => KeyArg::Template(s),
                    other => KeyArg::Expr(other),
                };
                store(&mut args.key, name, key, e);
            }
            "ttl" | "wait" | "min_hold" | "max_hold" => {
                let parsed = string_literal(value, &name, "\"30s\"", e)
                    .and_then(|lit| millis(&name, lit, e));
                if let Some(millis) = parsed {
                    let slot = match name.to_string().as_str() {
                        "ttl" => &mut args.ttl,
                        "wait" => &mut args.wait,
                        "min_hold" => &mut args.min_hold,
                        _ => &mut args.max_hold,
                    };
                    store(slot, name, millis, e);
                }
            }
            "on_busy" => {
                let parsed = string_literal(value, &name, "\"skip\"", e).and_then(|lit| {
                    let span = lit.span();
                    one_of(&name, &lit, ["error", "skip"], e).map(|v| match v {
                        "skip" => OnBusy::Skip(span),
                        _ => OnBusy::Error,
                    })
                });
                if let Some(on_busy) = parsed {
                    store(&mut args.on_busy, name, on_busy, e);
                }
            }
            "on_lost" => {
                let parsed = string_literal(value, &name, "\"continue\"", e).and_then(|lit| {
                    one_of(&name, &lit, ["abort", "continue"], e).map(|v| match v {
                        "continue" => OnLost::Continue,
                        _ => OnLost::Abort,
                    })
                });
                if let Some(on_lost) = parsed {
                    store(&mut args.on_lost, name, on_lost, e);
                }
            }
            "auto_extend" => match value {
                Expr::Lit(ExprLit {
                    lit: Lit::Bool(b), ..
                }) => store(&mut args.auto_extend, name, b, e),
                other => push(
                    e,
                    syn::Error::new_spanned(other, "`auto_extend` takes `true` or `false`"),
                ),
            },
            "fair" => match value {
                Expr::Lit(ExprLit {
                    lit: Lit::Bool(b), ..
                }) => store(&mut args.fair, name, b, e),
                other => push(
                    e,
                    syn::Error::new_spanned(other, "`fair` takes `true` or `false`"),
                ),
            },
            "shared" => match value {
                Expr::Lit(ExprLit {
                    lit: Lit::Bool(b), ..
                }) => store(&mut args.shared, name, b, e),
                other => push(
                    e,
                    syn::Error::new_spanned(other, "`shared` takes `true` or `false`"),
                ),
            },
            "reentrant" => match value {
                Expr::Lit(ExprLit {
                    lit: Lit::Bool(b), ..
                }) => store(&mut args.reentrant, name, b, e),
                other => push(
                    e,
                    syn::Error::new_spanned(other, "`reentrant` takes `true` or `false`"),
                ),
            },
            "permits" => match value {
                Expr::Lit(ExprLit {
                    lit: Lit::Int(n), ..
                }) => match n.base10_parse::<u32>() {
                    Ok(0) => push(
                        e,
                        syn::Error::new(
                            n.span(),
                            "`permits = 0` admits no holder; use 1 for a lock, or more: `permits = 3`",
                        ),
                    ),
                    Ok(count) => store(&mut args.permits, name, (count, n), e),
                    Err(_) => push(
                        e,
                        syn::Error::new(
                            n.span(),
                            format!("`permits` takes a whole number from 1 to {}", u32::MAX),
                        ),
                    ),
                },
                other => push(
                    e,
                    syn::Error::new_spanned(
                        other,
                        "`permits` takes an integer literal: `permits = 3`",
                    ),
                ),
            },
            "manager" => store(&mut args.manager, name, value, e),
            "crate" => {
                if let Some(lit) = string_literal(value, &name, "\"my_lock_core\"", e) {
                    store(&mut args.krate, name, lit, e);
                }
            }
            "guard" => match value {
                Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => {
                    let ident = p.path.get_ident().cloned().expect("checked above");
                    store(&mut args.guard, name, ident, e);
                }
                other => push(
                    e,
                    syn::Error::new_spanned(
                        other,
                        "`guard` takes the name of a variable to bind the guard to: `guard = lock`",
                    ),
                ),
            },
            unknown => match did_you_mean(unknown) {
                Some(known) => {
                    args.mentioned.push(known.to_owned());
                    push(
                        e,
                        syn::Error::new(
                            name.span(),
                            format!("unknown argument `{name}`; did you mean `{known}`?"),
                        ),
                    );
                }
                None => push(
                    e,
                    syn::Error::new(
                        name.span(),
                        format!("unknown argument `{name}`; expected one of {NAMES}"),
                    ),
                ),
            },
        }
        Ok(())
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, tokens) {
        // The arguments after a syntax error were not read: none is reported missing.
        args.unreadable = true;
        push(&mut errors, e);
    }
    (args, errors)
}

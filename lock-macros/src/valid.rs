//! Meaning: turns parsed arguments plus the fn's signature into a checked `Config`, collecting
//! every error with its span.

use proc_macro2::{Ident, Span};
use syn::{Expr, FnArg, ItemFn, LitStr, ReturnType, Type};

use crate::args::{push, Arg, Args, KeyArg, Millis, OnBusy, OnLost};
use crate::key::{parse_template, Piece};

/// How the lock name is computed.
pub(crate) enum Key {
    /// `format!(fmt, fields...)`: each field a parameter with a path of field names
    /// (`tenant.id`), all spanned at the template literal.
    Template {
        fmt: LitStr,
        fields: Vec<Field>,
    },
    Expr(Expr),
}

/// One placeholder: the parameter (or `self`) it starts from, and the field names after it.
pub(crate) struct Field {
    /// The parameter's own identifier, so that it resolves where the parameter is bound
    /// (a fn written by a `macro_rules!` has its parameters in the macro's hygiene, and its
    /// template may come from the macro's caller), located at the template for errors.
    pub(crate) root: Ident,
    /// Field names, as written (`r#type` for a raw one).
    pub(crate) rest: Vec<String>,
}

/// Renames the receiver `self` to `__self` in an expression (see [`Config::rename_self`]):
/// a path that is `self` alone (`self`, `self.id`, `self.locks()`), and `self` inside macro
/// invocations (`format!("counter:{}", self.id)`), whose tokens the syntax tree leaves
/// unparsed; never `self::module::ITEM`, which names a module.
struct RenameSelf;

impl syn::visit_mut::VisitMut for RenameSelf {
    fn visit_expr_path_mut(&mut self, expr: &mut syn::ExprPath) {
        let segments = &mut expr.path.segments;
        if expr.qself.is_none() && segments.len() == 1 && segments[0].ident == "self" {
            segments[0].ident = Ident::new("__self", segments[0].ident.span());
        }
        syn::visit_mut::visit_expr_path_mut(self, expr);
    }

    fn visit_macro_mut(&mut self, mac: &mut syn::Macro) {
        mac.tokens = receiver_renamed(std::mem::take(&mut mac.tokens));
    }
}

/// `tokens` with every `self` that is not the start of a path (`self::`) renamed `__self`.
fn receiver_renamed(tokens: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    use proc_macro2::{Group, TokenTree};
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut out = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.iter().enumerate() {
        out.push(match token {
            TokenTree::Ident(ident) if ident == "self" => {
                let module =
                    matches!(tokens.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == ':');
                if module {
                    token.clone()
                } else {
                    TokenTree::Ident(Ident::new("__self", ident.span()))
                }
            }
            TokenTree::Group(group) => {
                let mut renamed = Group::new(group.delimiter(), receiver_renamed(group.stream()));
                renamed.set_span(group.span());
                TokenTree::Group(renamed)
            }
            other => other.clone(),
        });
    }
    out.into_iter().collect()
}

pub(crate) struct Config {
    pub(crate) key: Key,
    pub(crate) ttl_ms: u64,
    /// The `ttl` literal, where a ttl past the runtime's maximum is reported.
    pub(crate) ttl_span: Span,
    pub(crate) wait_ms: u64,
    /// The span of `"skip"` when `on_busy = "skip"`.
    pub(crate) skip: Option<Span>,
    pub(crate) auto_extend: bool,
    pub(crate) abort_on_lost: bool,
    pub(crate) fair: bool,
    pub(crate) shared: bool,
    pub(crate) reentrant: bool,
    /// `permits = n`, when given (1 is the lock itself).
    pub(crate) permits: Option<u32>,
    pub(crate) min_hold_ms: Option<u64>,
    pub(crate) max_hold_ms: Option<u64>,
    pub(crate) manager: Option<Expr>,
    pub(crate) guard: Option<Ident>,
    pub(crate) krate: syn::Path,
}

/// A duration argument's value and the span of its literal.
impl Config {
    /// `self` in the key and the manager becomes `__self`: async-trait moves the receiver there
    /// before the body.
    pub(crate) fn rename_self(&mut self) {
        use syn::visit_mut::VisitMut;
        match &mut self.key {
            Key::Template { fields, .. } => {
                for field in fields {
                    if field.root == "self" {
                        field.root = Ident::new("__self", field.root.span());
                    }
                }
            }
            Key::Expr(expr) => RenameSelf.visit_expr_mut(expr),
        }
        if let Some(manager) = &mut self.manager {
            RenameSelf.visit_expr_mut(manager);
        }
    }
}

fn duration(arg: &Option<Arg<Millis>>) -> Option<(u64, Span)> {
    arg.as_ref().map(|a| (a.value.ms, a.value.lit.span()))
}

/// The text of a duration argument that was given (for messages).
fn literal(arg: &Option<Arg<Millis>>) -> String {
    arg.as_ref()
        .map(|a| a.value.lit.value())
        .unwrap_or_default()
}

fn nonzero(
    what: &str,
    value: Option<(u64, Span)>,
    errors: &mut Option<syn::Error>,
) -> Option<(u64, Span)> {
    match value {
        Some((0, span)) => {
            push(
                errors,
                syn::Error::new(span, format!("`{what}` must be at least 1ms")),
            );
            None
        }
        other => other,
    }
}

fn requires_auto_extend<T>(
    arg: &Option<Arg<T>>,
    auto_extend: bool,
    errors: &mut Option<syn::Error>,
) {
    if let (Some(arg), false) = (arg, auto_extend) {
        push(
            errors,
            syn::Error::new(
                arg.name.span(),
                format!(
                    "`{}` only applies with a watchdog; add `auto_extend = true`",
                    arg.name
                ),
            ),
        );
    }
}

/// Parameters that a template may name (simple identifiers), and the `self` token of the
/// receiver, if any.
fn parameters(item: &ItemFn) -> (Vec<Ident>, Option<Span>) {
    let mut names = Vec::new();
    let mut receiver = None;
    for input in &item.sig.inputs {
        match input {
            FnArg::Receiver(r) => receiver = Some(r.self_token.span),
            // A parameter written as a pattern (`(a, b): (u32, u32)`, `Job { id, .. }: Job`)
            // binds each of its names.
            FnArg::Typed(t) => {
                syn::visit_mut::VisitMut::visit_pat_mut(
                    &mut Bindings(&mut names),
                    &mut t.pat.as_ref().clone(),
                );
            }
        }
    }
    (names, receiver)
}

/// Whether the fn's body blocks on a runtime (`block_on`): what `#[tokio::test]` and
/// `#[tokio::main]` make of an `async fn`.
fn runs_its_own_runtime(item: &ItemFn) -> bool {
    fn has_block_on(tokens: proc_macro2::TokenStream) -> bool {
        tokens.into_iter().any(|token| match token {
            proc_macro2::TokenTree::Ident(ident) => ident == "block_on",
            proc_macro2::TokenTree::Group(group) => has_block_on(group.stream()),
            _ => false,
        })
    }
    has_block_on(quote::ToTokens::to_token_stream(&item.block))
}

/// The names a pattern binds.
struct Bindings<'a>(&'a mut Vec<Ident>);

impl syn::visit_mut::VisitMut for Bindings<'_> {
    fn visit_pat_ident_mut(&mut self, pat: &mut syn::PatIdent) {
        self.0.push(pat.ident.clone());
        syn::visit_mut::visit_pat_ident_mut(self, pat);
    }
}

/// A name without its raw prefix: `{type}` and `{r#type}` both name `r#type: u32`.
fn unraw(name: &str) -> &str {
    name.strip_prefix("r#").unwrap_or(name)
}

fn template(lit: &LitStr, item: &ItemFn, errors: &mut Option<syn::Error>) -> Option<Key> {
    let pieces = match parse_template(&lit.value()) {
        Ok(pieces) => pieces,
        Err(msg) => {
            push(errors, syn::Error::new(lit.span(), msg));
            return None;
        }
    };
    let (params, receiver) = parameters(item);
    let span = lit.span();
    let mut fmt = String::new();
    let mut fields = Vec::new();
    let mut ok = true;
    for piece in pieces {
        match piece {
            Piece::Text(text) => fmt.push_str(&text.replace('{', "{{").replace('}', "}}")),
            Piece::Field(path) => {
                let shown = path.join(".");
                let root = &path[0];
                let param = params.iter().find(|p| unraw(&p.to_string()) == unraw(root));
                let problem = if root == "self" {
                    receiver.is_none().then(|| {
                        format!("`{{{shown}}}` in `key` needs a method with a `self` receiver, and this fn has none")
                    })
                } else if param.is_none() {
                    let mut listed: Vec<String> = Vec::new();
                    if receiver.is_some() {
                        listed.push("`self`".to_owned());
                    }
                    listed.extend(params.iter().map(|p| format!("`{p}`")));
                    let listed = if listed.is_empty() {
                        "the fn has no parameters".to_owned()
                    } else {
                        format!("parameters are {}", listed.join(", "))
                    };
                    Some(format!(
                        "unknown placeholder `{{{shown}}}` in `key`; {listed}"
                    ))
                } else {
                    None
                };
                if let Some(message) = problem {
                    push(errors, syn::Error::new(span, message));
                    ok = false;
                    continue;
                }
                fmt.push_str("{}");
                let root = match (param, receiver) {
                    (Some(param), _) => {
                        let mut root = param.clone();
                        root.set_span(param.span().located_at(span));
                        root
                    }
                    (None, Some(receiver)) => Ident::new("self", receiver.located_at(span)),
                    (None, None) => unreachable!("reported above"),
                };
                fields.push(Field {
                    root,
                    rest: path[1..].to_vec(),
                });
            }
        }
    }
    ok.then(|| Key::Template {
        fmt: LitStr::new(&fmt, span),
        fields,
    })
}

/// Checks that the fn returns a `Result`: `Result<T, E>`, `io::Result<T>`, `anyhow::Result<T>`,
/// or an alias of any name (`type JobResult<T> = Result<T, JobError>`), which the compiler then
/// checks through `lock_core::__private::LockResult`. A type that is certainly no `Result` (a
/// primitive, `String`, `Option`, `Vec`, `Box`, a tuple, a reference) is refused here.
fn check_return(item: &ItemFn, errors: &mut Option<syn::Error>) {
    const NOT_RESULTS: [&str; 21] = [
        "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
        "f32", "f64", "bool", "char", "str", "String", "Option", "Vec", "Box",
    ];
    let fix = "`#[distributed_lock]` needs a fn returning `Result<T, E>` with `E: From<lock_core::LockError>`, so lock failures can be returned";
    match &item.sig.output {
        ReturnType::Default => push(
            errors,
            syn::Error::new(
                item.sig.paren_token.span.close(),
                format!("{fix}; add `-> Result<(), YourError>`"),
            ),
        ),
        ReturnType::Type(_, ty) => {
            let is_result = matches!(&**ty, Type::Path(p) if p.qself.is_none()
                && p.path.segments.last().is_some_and(|s| !NOT_RESULTS.iter().any(|n| s.ident == n)));
            if !is_result {
                push(
                    errors,
                    syn::Error::new_spanned(ty, format!("{fix}; this fn returns another type")),
                );
            }
        }
    }
}

pub(crate) fn check(
    args: Args,
    item: &ItemFn,
    mut errors: Option<syn::Error>,
) -> Result<Config, syn::Error> {
    let e = &mut errors;
    if item.sig.asyncness.is_none() && runs_its_own_runtime(item) {
        // `#[tokio::test]` or `#[tokio::main]` above: it made the `async fn` a plain fn that
        // blocks on the body, before this attribute saw it. One error, not a second about
        // the return type it also changed.
        push(
            e,
            syn::Error::new(
                item.sig.fn_token.span,
                "`#[distributed_lock]` must come above `#[tokio::test]` or `#[tokio::main]`: they turn the `async fn` into a plain fn before it is seen; put `#[distributed_lock]` first",
            ),
        );
    } else {
        if item.sig.asyncness.is_none() {
            push(
                e,
                syn::Error::new(
                    item.sig.fn_token.span,
                    "`#[distributed_lock]` needs an `async fn`; add `async` before `fn`",
                ),
            );
        }
        check_return(item, e);
    }

    let mentioned = |name: &str| args.unreadable || args.mentioned.iter().any(|m| m == name);
    let (key_missing, ttl_missing) = (!mentioned("key"), !mentioned("ttl"));
    if key_missing && ttl_missing {
        // One error for a bare attribute, not two on the same span.
        push(
            e,
            syn::Error::new(
                Span::call_site(),
                "missing `key` and `ttl`: write `#[distributed_lock(key = \"jobs:{param}\", ttl = \"30s\")]`",
            ),
        );
    } else if key_missing {
        push(
            e,
            syn::Error::new(
                Span::call_site(),
                "missing `key`: add `key = \"jobs:{param}\"`",
            ),
        );
    } else if ttl_missing {
        push(
            e,
            syn::Error::new(
                Span::call_site(),
                "missing `ttl`: add `ttl = \"30s\"` (how long the lease lasts)",
            ),
        );
    }
    let key = match &args.key {
        None => None,
        Some(Arg {
            value: KeyArg::Template(lit),
            ..
        }) => template(lit, item, e),
        Some(Arg {
            value: KeyArg::Expr(expr),
            ..
        }) => Some(Key::Expr(expr.clone())),
    };

    let ttl = nonzero("ttl", duration(&args.ttl), e);
    let wait = duration(&args.wait);
    let min_hold = nonzero("min_hold", duration(&args.min_hold), e);
    let max_hold = nonzero("max_hold", duration(&args.max_hold), e);
    if let (Some((min, span)), Some((ttl, _))) = (min_hold, ttl) {
        if min > ttl {
            push(
                e,
                syn::Error::new(
                    span,
                    format!(
                        "`min_hold` (\"{}\") is longer than `ttl` (\"{}\"): the key would expire first; lower `min_hold` or raise `ttl`",
                        literal(&args.min_hold),
                        literal(&args.ttl),
                    ),
                ),
            );
        }
    }
    let fair = args.fair.as_ref().filter(|a| a.value.value);
    if let (Some(fair), Some(permits)) = (fair, args.permits.as_ref()) {
        if permits.value.0 > 1 {
            push(
                e,
                syn::Error::new(
                    fair.name.span(),
                    format!(
                        "`fair = true` serves one holder at a time; it cannot be combined with `permits = {}`: remove one",
                        permits.value.0
                    ),
                ),
            );
        }
    }
    if let Some(shared) = args.shared.as_ref().filter(|a| a.value.value) {
        if fair.is_some() {
            push(
                e,
                syn::Error::new(
                    shared.name.span(),
                    "`shared = true` holds do not wait for one another, so they cannot be served in line: remove `fair = true` or `shared = true`",
                ),
            );
        }
        if let Some(permits) = args.permits.as_ref().filter(|p| p.value.0 > 1) {
            push(
                e,
                syn::Error::new(
                    shared.name.span(),
                    format!(
                        "`shared = true` admits any number of holders; it cannot be combined with `permits = {}`: remove one",
                        permits.value.0
                    ),
                ),
            );
        }
    }
    let auto_extend = args.auto_extend.as_ref().is_some_and(|a| a.value.value);
    requires_auto_extend(&args.on_lost, auto_extend, e);
    requires_auto_extend(&args.max_hold, auto_extend, e);
    let on_busy = args.on_busy.as_ref().map_or(OnBusy::Error, |a| a.value);
    let on_lost = args.on_lost.as_ref().map_or(OnLost::Abort, |a| a.value);
    let krate = match &args.krate {
        None => Some(syn::parse_quote!(::lock_core)),
        Some(arg) => match arg.value.parse::<syn::Path>() {
            Ok(path) => Some(path),
            Err(_) => {
                push(
                    e,
                    syn::Error::new(
                        arg.value.span(),
                        "`crate` takes a path to lock-core: `crate = \"my_lock_core\"`",
                    ),
                );
                None
            }
        },
    };

    if let Some(errors) = errors {
        return Err(errors);
    }
    Ok(Config {
        key: key.expect("no error, so present"),
        ttl_ms: ttl.expect("no error, so present").0,
        ttl_span: ttl.expect("no error, so present").1,
        wait_ms: wait.map_or(0, |(ms, _)| ms),
        skip: match on_busy {
            OnBusy::Skip(span) => Some(span),
            OnBusy::Error => None,
        },
        auto_extend,
        abort_on_lost: auto_extend && on_lost == OnLost::Abort,
        fair: args.fair.as_ref().is_some_and(|a| a.value.value),
        shared: args.shared.as_ref().is_some_and(|a| a.value.value),
        reentrant: args.reentrant.as_ref().is_some_and(|a| a.value.value),
        permits: args.permits.as_ref().map(|a| a.value.0),
        min_hold_ms: min_hold.map(|(ms, _)| ms),
        max_hold_ms: max_hold.map(|(ms, _)| ms),
        manager: args.manager.map(|a| a.value),
        guard: args.guard.map(|a| a.value),
        krate: krate.expect("no error, so present"),
    })
}

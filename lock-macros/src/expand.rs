//! The rewrite of the fn.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::visit_mut::VisitMut;
use syn::{ItemFn, ReturnType, Type};

use crate::args;
use crate::valid::{self, Config, Key};

/// Entry point: the attribute's arguments and the item it stands on.
pub(crate) fn distributed_lock(attr: TokenStream, item: TokenStream) -> TokenStream {
    let (attr, stacked) = stacked_marker(attr);
    if !stacked {
        if let Ok(item_fn) = syn::parse2::<ItemFn>(item.clone()) {
            if let Some(reordered) = top_down(&attr, item_fn) {
                return reordered;
            }
        }
    }
    let (args, errors) = args::parse(attr);
    let item_fn: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let error = match syn::parse2::<syn::TraitItemFn>(item.clone()) {
                // A trait's method declaration: nothing to lock yet.
                Ok(decl) if decl.default.is_none() => syn::Error::new(
                    decl.sig.fn_token.span,
                    "`#[distributed_lock]` needs a body to lock, and a trait's method declaration has none: annotate the method in each `impl` of the trait",
                ),
                _ => syn::Error::new(
                    not_a_fn_span(&item),
                    "`#[distributed_lock]` only applies to an `async fn`",
                ),
            };
            return with_error(item, error);
        }
    };
    // A method of an `#[async_trait]` impl reaches us already rewritten by async-trait: a
    // plain fn returning `Box::pin(async move { .. let __ret: Ret = { body }; __ret })`.
    // The lock goes around `body`, inside that future (as tracing's `#[instrument]` does).
    if let Some(boxed) = AsyncTraitBody::find(&item_fn) {
        let plain = boxed.as_async_fn(&item_fn);
        return match valid::check(args, &plain, errors) {
            Ok(mut config) => {
                if boxed.moves_self {
                    // async-trait moved `self` into `__self` before the body: the key and the
                    // manager, written with `self`, must name it so too.
                    config.rename_self();
                }
                let locked = rewrite(plain, &config);
                boxed.with_body(item_fn, *locked.block).into_token_stream()
            }
            Err(error) => with_error(item, error),
        };
    }
    match valid::check(args, &item_fn, errors) {
        Ok(config) => rewrite(item_fn, &config).into_token_stream(),
        // One mistake, one error: the item is emitted unchanged next to it.
        Err(error) => with_error(item, error),
    }
}

/// The argument that marks an attribute of a stack already put in order (see [`top_down`]):
/// not for users, and not an argument of the lock.
const STACKED: &str = "__stacked";

/// `attr` without the [`STACKED`] marker, and whether it had it.
fn stacked_marker(attr: TokenStream) -> (TokenStream, bool) {
    let mut tokens = attr.clone().into_iter();
    match (tokens.next(), tokens.next()) {
        (Some(proc_macro2::TokenTree::Ident(i)), Some(proc_macro2::TokenTree::Punct(p)))
            if i == STACKED && p.as_char() == ',' =>
        {
            (tokens.collect(), true)
        }
        (Some(proc_macro2::TokenTree::Ident(i)), None) if i == STACKED => {
            (TokenStream::new(), true)
        }
        _ => (attr, false),
    }
}

fn is_lock_attribute(attr: &syn::Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "distributed_lock")
}

fn is_marked(attr: &syn::Attribute) -> bool {
    match &attr.meta {
        syn::Meta::List(list) => stacked_marker(list.tokens.clone()).1,
        _ => false,
    }
}

/// Stacked attributes take their locks top-down, in the order the code reads (as hand-written
/// code would take them, and as two stacks must agree on to never deadlock). Attribute macros
/// expand top first and each wraps the body it is given, so the bottom one would end up
/// outermost and take its lock first. So the top one, finding other `#[distributed_lock]`s
/// below it, does not rewrite anything: it puts the whole stack back in reverse order, each
/// marked as ordered, where the first of the others stood. `None` when there is no stack.
fn top_down(attr: &TokenStream, mut item: ItemFn) -> Option<TokenStream> {
    let below: Vec<usize> = (0..item.attrs.len())
        .filter(|&i| is_lock_attribute(&item.attrs[i]) && !is_marked(&item.attrs[i]))
        .collect();
    let first = *below.first()?;
    let mut stack: Vec<syn::Attribute> = Vec::with_capacity(below.len() + 1);
    // This attribute is the top of the stack; the compiler has taken it off the item.
    let (args, _) = args::parse(attr.clone());
    let krate: syn::Path = args
        .krate
        .as_ref()
        .and_then(|k| k.value.parse().ok())
        .unwrap_or_else(|| syn::parse_quote!(::lock_core));
    let marker = proc_macro2::Ident::new(STACKED, Span::call_site());
    stack.push(syn::parse_quote!(#[#krate::distributed_lock(#marker, #attr)]));
    for &i in &below {
        let mut other = item.attrs[i].clone();
        let tokens = match &other.meta {
            syn::Meta::List(list) => list.tokens.clone(),
            _ => TokenStream::new(),
        };
        let path = other.path().clone();
        other.meta = syn::parse_quote!(#path(#marker, #tokens));
        stack.push(other);
    }
    for &i in below.iter().rev() {
        item.attrs.remove(i);
    }
    stack.reverse();
    item.attrs.splice(first..first, stack);
    Some(item.into_token_stream())
}

/// Where async-trait put the method's own body: the `let __ret: Ret = { body };` statement
/// of the `async move` block in `Box::pin(..)`, the fn's only statement.
struct AsyncTraitBody {
    /// Where that statement is: its index in the async block, after the indexes of the
    /// statements that bind the async blocks it is nested in (see [`Self::find_in`]).
    path: Vec<usize>,
    /// async-trait wrote `let __self = self;` before it (any receiver).
    moves_self: bool,
    ret: Type,
    body: syn::Block,
    /// Parameters async-trait renamed `__argN` because they were patterns, with the pattern
    /// it binds before the body (`let (a, b) = { let __arg1 = __arg1; __arg1 };`).
    patterns: Vec<(String, syn::Pat)>,
}

impl AsyncTraitBody {
    fn async_block(item: &ItemFn) -> Option<&syn::ExprAsync> {
        if item.sig.asyncness.is_some() || item.block.stmts.len() != 1 {
            return None;
        }
        let syn::Stmt::Expr(syn::Expr::Call(call), None) = &item.block.stmts[0] else {
            return None;
        };
        let syn::Expr::Path(func) = &*call.func else {
            return None;
        };
        let names: Vec<String> = func
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        if !names.ends_with(&["Box".to_owned(), "pin".to_owned()]) || call.args.len() != 1 {
            return None;
        }
        match &call.args[0] {
            syn::Expr::Async(block) if block.capture.is_some() => Some(block),
            _ => None,
        }
    }

    fn find(item: &ItemFn) -> Option<Self> {
        Self::find_in(&Self::async_block(item)?.block)
    }

    /// The `let __ret: Ret = { body };` statement in `block`, or in an async block bound by one
    /// of its statements: `#[tracing::instrument]` above this attribute nests async-trait's
    /// block one level down (`let __tracing_instrument_future = async move { .. };`).
    fn find_in(block: &syn::Block) -> Option<Self> {
        let here = block.stmts.iter().enumerate().find_map(|(stmt, s)| {
            let syn::Stmt::Local(local) = s else {
                return None;
            };
            let syn::Pat::Type(typed) = &local.pat else {
                return None;
            };
            let syn::Pat::Ident(ident) = &*typed.pat else {
                return None;
            };
            if ident.ident != "__ret" {
                return None;
            }
            let init = local.init.as_ref()?;
            let syn::Expr::Block(body) = &*init.expr else {
                return None;
            };
            let moves_self = block.stmts[..stmt].iter().any(|s| {
                matches!(s, syn::Stmt::Local(local)
                    if matches!(&local.pat, syn::Pat::Ident(p) if p.ident == "__self"))
            });
            let patterns = block.stmts[..stmt]
                .iter()
                .filter_map(Self::pattern_of_argument)
                .collect();
            Some(AsyncTraitBody {
                path: vec![stmt],
                moves_self,
                ret: (*typed.ty).clone(),
                body: body.block.clone(),
                patterns,
            })
        });
        here.or_else(|| {
            block.stmts.iter().enumerate().find_map(|(stmt, s)| {
                let syn::Stmt::Local(local) = s else {
                    return None;
                };
                let syn::Expr::Async(inner) = &*local.init.as_ref()?.expr else {
                    return None;
                };
                let mut found = Self::find_in(&inner.block)?;
                found.path.insert(0, stmt);
                Some(found)
            })
        })
    }

    /// The method as the `async fn` it was written as: what the checks and the rewrite read.
    /// `let <pattern> = { let __argN = __argN; __argN };`: async-trait's binding of a
    /// parameter written as a pattern.
    fn pattern_of_argument(stmt: &syn::Stmt) -> Option<(String, syn::Pat)> {
        let syn::Stmt::Local(local) = stmt else {
            return None;
        };
        let syn::Expr::Block(block) = &*local.init.as_ref()?.expr else {
            return None;
        };
        let Some(syn::Stmt::Expr(syn::Expr::Path(last), None)) = block.block.stmts.last() else {
            return None;
        };
        let name = last.path.get_ident()?.to_string();
        name.starts_with("__arg").then(|| (name, local.pat.clone()))
    }

    fn as_async_fn(&self, item: &ItemFn) -> ItemFn {
        let mut plain = item.clone();
        // The parameters as the user wrote them, so that their names can be placeholders.
        for input in &mut plain.sig.inputs {
            if let syn::FnArg::Typed(typed) = input {
                if let syn::Pat::Ident(ident) = &*typed.pat {
                    let name = ident.ident.to_string();
                    if let Some((_, pat)) = self.patterns.iter().find(|(n, _)| *n == name) {
                        *typed.pat = pat.clone();
                    }
                }
            }
        }
        plain.sig.asyncness = Some(syn::Token![async](item.sig.fn_token.span));
        let ret = &self.ret;
        plain.sig.output = syn::parse_quote!(-> #ret);
        plain.block = Box::new(self.body.clone());
        plain
    }

    /// `item` with the locking block in place of the body.
    fn with_body(self, mut item: ItemFn, locked: syn::Block) -> ItemFn {
        let syn::Stmt::Expr(syn::Expr::Call(call), None) = &mut item.block.stmts[0] else {
            unreachable!("found above");
        };
        let syn::Expr::Async(block) = &mut call.args[0] else {
            unreachable!("found above");
        };
        let (last, nested) = self.path.split_last().expect("a path has a statement");
        let mut block = &mut block.block;
        for &stmt in nested {
            let syn::Stmt::Local(local) = &mut block.stmts[stmt] else {
                unreachable!("found above");
            };
            let init = local.init.as_mut().expect("found above");
            let syn::Expr::Async(inner) = &mut *init.expr else {
                unreachable!("found above");
            };
            block = &mut inner.block;
        }
        let syn::Stmt::Local(local) = &mut block.stmts[*last] else {
            unreachable!("found above");
        };
        let init = local.init.as_mut().expect("found above");
        *init.expr = syn::Expr::Block(syn::ExprBlock {
            attrs: Vec::new(),
            label: None,
            block: locked,
        });
        item
    }
}

fn with_error(item: TokenStream, error: syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    // The fn as it was, so that its callers still compile; its parameters that the lock would
    // have used (a `manager`) are not reported unused on top of the error.
    if syn::parse2::<ItemFn>(item.clone()).is_ok() {
        return quote!(#[allow(unused_variables)] #item #error);
    }
    quote!(#item #error)
}

/// The keyword of the item that is not a fn (`struct`, `impl`, ...), to point the error at.
fn not_a_fn_span(item: &TokenStream) -> Span {
    match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Struct(s)) => s.struct_token.span,
        Ok(syn::Item::Enum(e)) => e.enum_token.span,
        Ok(syn::Item::Impl(i)) => i.impl_token.span,
        Ok(syn::Item::Trait(t)) => t.trait_token.span,
        Ok(syn::Item::Mod(m)) => m.mod_token.span,
        Ok(other) => syn::spanned::Spanned::span(&other),
        Err(_) => Span::call_site(),
    }
}

/// `impl Trait` cannot name a `let` binding's type; `_` lets inference fill it in.
struct EraseImplTrait;

impl VisitMut for EraseImplTrait {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(it) = ty {
            *ty = Type::Infer(syn::TypeInfer {
                underscore_token: syn::Token![_](syn::spanned::Spanned::span(it)),
            });
        } else {
            syn::visit_mut::visit_type_mut(self, ty);
        }
    }
}

fn duration(ms: u64) -> TokenStream {
    quote!(::core::time::Duration::from_millis(#ms))
}

// #[distributed_lock(key = "jobs:{tenant}", ttl = "30s")]
// async fn run(tenant: u64) -> Result<T, E> { body }
//
// becomes
//
// async fn run(tenant: u64) -> Result<T, E> {
//     let name = format!("jobs:{}", &tenant);                    // before the body moves anything
//     let guard = match acquire(manager, name, options).await {  // Err(e) => return Err(E::from(e))
//         ...                                                    // skip: return Ok(Default::default())
//     };
//     let ret: Result<T, E> = async move { body }.await;         // `return` and `?` stay in the body
//     finish(guard).await;                                       // released before we return
//     ret
// }
fn rewrite(mut item: ItemFn, config: &Config) -> ItemFn {
    let krate = &config.krate;
    let mixed = Span::mixed_site();
    let name = quote_spanned!(mixed=> __lock_name);
    let manager = quote_spanned!(mixed=> __lock_manager);
    let guard = quote_spanned!(mixed=> __lock_guard);
    let body = quote_spanned!(mixed=> __lock_body);
    let ret = quote_spanned!(mixed=> __lock_ret);
    let error = quote_spanned!(mixed=> __lock_error);
    let request = quote_spanned!(mixed=> __lock_request);

    let key = match &config.key {
        Key::Template { fmt, fields } => {
            let span = fmt.span();
            // The parameter resolves where the fn's own names do. A field name is not a
            // variable, so hygiene does not matter to it; spanned "from the macro" (at the same
            // place), a misspelt field gets rustc's error at the literal without a suggestion
            // to replace the whole template by the field it meant.
            let field_span = span.resolved_at(Span::mixed_site());
            let args = fields.iter().map(|field| {
                let first = &field.root;
                let rest = field.rest.iter().map(|f| {
                    if let Ok(index) = f.parse::<u32>() {
                        let index = syn::Index {
                            index,
                            span: field_span,
                        };
                        return index.into_token_stream();
                    }
                    match f.strip_prefix("r#") {
                        Some(raw) => proc_macro2::Ident::new_raw(raw, field_span),
                        None => proc_macro2::Ident::new(f, field_span),
                    }
                    .into_token_stream()
                });
                quote_spanned!(span=> &#first #(.#rest)*)
            });
            quote!(::std::format!(#fmt #(, #args)*))
        }
        // Spanned at the expression: a type without `Display` is reported there.
        Key::Expr(expr) => {
            let span = syn::spanned::Spanned::span(expr);
            quote_spanned!(span=> ::std::string::ToString::to_string(&(#expr)))
        }
    };
    // Lock errors become the fn's error type. When the return type names it
    // (`Result<T, E>`), through a trait whose message says what to write, at `E`: every
    // conversion reports there, so a missing `From<LockError>` is one error at the culprit.
    // The `Err` a lock error returns as. A `Result` under another name (an alias) is asked
    // for its own `Err` through `LockResult`, which also says, at the return type, when it is
    // no `Result` at all.
    let fail = match (error_type(&item.sig.output), result_alias(&item.sig.output)) {
        (Some(err_ty), _) => {
            let span = syn::spanned::Spanned::span(err_ty);
            let convert = quote_spanned!(span=> <#err_ty as #krate::__private::FromLockError>::from_lock_error(#error));
            quote!(::core::result::Result::Err(#convert))
        }
        (None, Some(alias)) => {
            let span = syn::spanned::Spanned::span(alias);
            quote_spanned!(span=> <#alias as #krate::__private::LockResult>::from_error(
                <<#alias as #krate::__private::LockResult>::Error as #krate::__private::FromLockError>::from_lock_error(#error)
            ))
        }
        (None, None) => quote!(::core::result::Result::Err(::core::convert::From::from(#error))),
    };
    // Metrics are labelled by the template, not by each key it makes.
    let label = match &config.key {
        Key::Template { fmt, .. } => quote!(.metrics_label(#fmt)),
        Key::Expr(_) => quote!(),
    };
    // Spanned at the `manager` expression: a value that is no manager is reported there.
    let manager_ref = match &config.manager {
        Some(expr) => {
            let span = syn::spanned::Spanned::span(expr);
            // The same binding, located at the expression.
            let arg = proc_macro2::Ident::new("__lock_manager", mixed.located_at(span));
            quote_spanned!(span=> #krate::__private::ManagerRef::lock_manager(#arg))
        }
        None => quote!(#krate::__private::ManagerRef::lock_manager(#manager)),
    };
    let manager_expr = match &config.manager {
        Some(expr) => quote!(&(#expr)),
        None => quote!(&(match #krate::__private::default_manager() {
            ::core::result::Result::Ok(m) => m,
            ::core::result::Result::Err(#error) => {
                return #fail;
            }
        })),
    };
    let ttl = duration(config.ttl_ms);
    // Checked against the runtime's own bound, at compile time, at the `ttl` literal.
    let ttl_lit = proc_macro2::Literal::u64_unsuffixed(config.ttl_ms);
    let ttl_bound = quote_spanned!(config.ttl_span=>
        const _: () = ::core::assert!(
            #ttl_lit <= #krate::MAX_TTL.as_millis(),
            "`ttl` is longer than lock_core::MAX_TTL (100 years)"
        );
    );
    let wait = duration(config.wait_ms);
    // Optional settings are builder calls, or nothing.
    let min_hold = config.min_hold_ms.map(|ms| {
        let d = duration(ms);
        quote!(.min_hold(#d))
    });
    let max_hold = config.max_hold_ms.map(|ms| {
        let d = duration(ms);
        quote!(.max_hold(#d))
    });
    let auto_extend = config.auto_extend;
    let fair = config.fair;
    let shared = config.shared.then(|| quote!(.shared(true)));
    let reentrant = config.reentrant;
    let permits = config.permits.map(|n| quote!(.permits(#n)));
    let skip_if_busy = config.skip.is_some();
    let on_busy = match config.skip {
        // Spanned at "skip", so a `T` without `Default` is reported there.
        Some(span) => {
            quote_spanned!(span=> return ::core::result::Result::Ok(::core::default::Default::default()))
        }
        None => quote!(::core::unreachable!(
            "acquire returns None only with on_busy = \"skip\""
        )),
    };

    let ret_ty = match &item.sig.output {
        ReturnType::Type(_, ty) => {
            let mut ty = (**ty).clone();
            EraseImplTrait.visit_type_mut(&mut ty);
            ty
        }
        ReturnType::Default => unreachable!("checked in valid.rs"),
    };
    let user_block = &item.block;
    let bind_guard = config
        .guard
        .as_ref()
        .map(|ident| quote!(let #ident: &#krate::LockGuard = &#guard;));
    let run_body = if config.abort_on_lost {
        let outcome = quote_spanned!(mixed=> __lock_outcome);
        quote!({
            let #outcome = #krate::__private::until_lost(&#guard, #body).await;
            match #outcome {
            ::core::result::Result::Ok(#ret) => #ret,
            ::core::result::Result::Err(#error) => {
                #krate::__private::finish(#guard).await;
                return #fail;
            }
        }})
    } else {
        quote!(#body.await)
    };

    let new_block = quote! {
        {
            #ttl_bound
            let #name: ::std::string::String = #key;
            let #guard = {
                let #manager = #manager_expr;
                // The runtime's own request and builder: one set of options, checked once
                // more at run time by the same rules.
                let #request = #krate::LockManager::lock(
                    #manager_ref,
                    #name,
                )
                .ttl(#ttl)
                .wait(#wait)
                .auto_extend(#auto_extend)
                .fair(#fair)
                .reentrant(#reentrant)
                #shared
                #permits
                #min_hold
                #max_hold
                #label;
                match #krate::__private::acquire(#request, #skip_if_busy).await
                {
                    ::core::result::Result::Ok(::core::option::Option::Some(#guard)) => #guard,
                    ::core::result::Result::Ok(::core::option::Option::None) => { #on_busy }
                    ::core::result::Result::Err(#error) => {
                        return #fail;
                    }
                }
            };
            let #ret: #ret_ty = {
                #bind_guard
                // Run with the lock among the task's held locks (`held`, `reentrant`).
                // A panic in the body releases the lock (awaited) before it unwinds on.
                let #body = #krate::__private::catching(&#guard, #krate::__private::holding(&#guard, async move {
                    #[allow(unreachable_code, clippy::let_and_return, clippy::needless_return, clippy::diverging_sub_expression)]
                    let #ret: #ret_ty = #user_block;
                    #[allow(unreachable_code)]
                    #ret
                }));
                #run_body
            };
            #krate::__private::finish(#guard).await;
            #ret
        }
    };
    item.block = Box::new(syn::parse2(new_block).expect("the rewritten body is a block"));
    item
}

/// `E` of a return type written `Result<T, E>` (any path ending in `Result` with two type
/// arguments); `None` for an alias such as `io::Result<T>`.
/// The return type when it is a path whose last segment is not `Result` (an alias of one,
/// checked by the compiler through `LockResult`), and names no `impl Trait`.
fn result_alias(output: &ReturnType) -> Option<&Type> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    let Type::Path(path) = &**ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    (!names_impl_trait(ty) && last.ident != "Result").then_some(&**ty)
}

fn error_type(output: &ReturnType) -> Option<&Type> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    let Type::Path(path) = &**ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    // `impl Trait` cannot be named in an expression: the plain `From` conversion then.
    if names_impl_trait(ty) {
        return None;
    }
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        syn::GenericArgument::Type(t) => Some(t),
        _ => None,
    });
    let (_ok, err) = (types.next()?, types.next()?);
    Some(err)
}

/// Whether `ty` contains `impl Trait` (which an expression cannot name).
fn names_impl_trait(ty: &Type) -> bool {
    let mut found = false;
    FindImplTrait(&mut found).visit_type_mut(&mut ty.clone());
    found
}

/// Sets its flag when a type contains `impl Trait`.
struct FindImplTrait<'a>(&'a mut bool);

impl VisitMut for FindImplTrait<'_> {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(_) = ty {
            *self.0 = true;
        } else {
            syn::visit_mut::visit_type_mut(self, ty);
        }
    }
}

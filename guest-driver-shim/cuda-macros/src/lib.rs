//! `cuda_exports!`: every function CUDA 13.0's `cuda.h` declares (read from the bindgen output
//! checked in as `vgpu-cuda-decls/src/cuda_13_0.rs`), handed with its name, arguments and
//! return type to a callback macro.
//!
//! Plain form: `cuda_exports!(callback)` expands to
//! `callback! { fn cuInit(Flags: ::vgpu_cuda_decls::core::ffi::c_uint) -> ::vgpu_cuda_decls::CUresult; ... }`
//! (types named by path into the decls crate).
//!
//! Route form, the shim's route table: every export gets exactly one route.
//!
//! ```text
//! cuda_exports! {
//!     callback: shim_export;            // the macro_rules! callback
//!     types: vgpu_cuda_decls;           // where the header's type names live
//!     symbols: "symbols/libcuda-580-symbols.txt";  // the real driver's exports (from CARGO_MANIFEST_DIR)
//!     undeclared: "no declaration in CUDA 13.0's headers";  // reason for exports cuda.h lacks
//!     default: "not forwarded yet";     // reason for declared exports no route names
//!     implemented: [cuInit, ...];       // bodies of the shim's own
//!     alias: [cuCtxDestroy = cuCtxDestroy_v2, ...];  // same header signature, target's body
//!     forwarded: [];                    // plain forwards (crate::forward::NAME)
//!     unsupported "OpenGL interop: no display in a guest": [cuGLInit, ...];
//! }
//! ```
//!
//! expands to one `callback! { ... }` whose entries, sorted by name, are one of
//!
//! ```text
//! implemented [] fn NAME(ARG: TYPE, ...) -> RET;
//! implemented [] fn NAME;                        // implemented, not declared in cuda.h
//! alias [TARGET] fn NAME(ARG: TYPE, ...) -> RET;
//! forwarded [] fn NAME(ARG: TYPE, ...) -> RET;
//! unsupported ["REASON"] fn NAME(ARG: TYPE, ...) -> RET;
//! unsupported ["REASON"] fn NAME;                // not declared in cuda.h
//! ```
//!
//! The exports are the real driver's list plus every name a route names. A route naming a
//! function that is neither declared nor exported, a name routed twice, an alias whose
//! target is not implemented or whose signature differs from its target's, and a forward of
//! an undeclared function are compile errors.

use std::collections::{BTreeMap, BTreeSet};

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::{
    FnArg, ForeignItem, Ident, Item, LitStr, Pat, Path, ReturnType, Token, Type, bracketed,
    parse::{Parse, ParseStream},
    punctuated::Punctuated,
    visit_mut::VisitMut,
};

/// The checked-in bindgen output.
const DECLS: &str = include_str!("../../cuda-decls/src/cuda_13_0.rs");

#[proc_macro]
pub fn cuda_exports(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    match expand(input.into(), &manifest_dir) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// One declared function: its arguments (name, type) and return type, types as bindgen wrote
/// them.
#[derive(Clone)]
struct Decl {
    args: Vec<(Ident, Type)>,
    ret: Type,
}

/// Every function of the checked-in declarations, by name.
fn declarations(source: &str) -> syn::Result<BTreeMap<String, Decl>> {
    let file = syn::parse_file(source)?;
    let mut out = BTreeMap::new();
    for item in file.items {
        let Item::ForeignMod(m) = item else { continue };
        for f in m.items {
            let ForeignItem::Fn(f) = f else { continue };
            let mut args = Vec::new();
            for a in &f.sig.inputs {
                let FnArg::Typed(a) = a else {
                    return Err(syn::Error::new_spanned(a, "a receiver in an extern block"));
                };
                let Pat::Ident(name) = &*a.pat else {
                    return Err(syn::Error::new_spanned(&a.pat, "an unnamed argument"));
                };
                args.push((name.ident.clone(), (*a.ty).clone()));
            }
            let ret = match &f.sig.output {
                ReturnType::Default => syn::parse_quote!(()),
                ReturnType::Type(_, t) => (**t).clone(),
            };
            out.insert(f.sig.ident.to_string(), Decl { args, ret });
        }
    }
    Ok(out)
}

/// Rewrites the header's bare type names (`CUstream`) as paths into the decls crate.
struct Qualify<'a>(&'a Path);

const PRIMITIVES: &[&str] = &[
    "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize", "f32",
    "f64", "bool", "char",
];

impl VisitMut for Qualify<'_> {
    fn visit_type_path_mut(&mut self, t: &mut syn::TypePath) {
        syn::visit_mut::visit_type_path_mut(self, t);
        if t.qself.is_some() || t.path.leading_colon.is_some() {
            return;
        }
        let first = t.path.segments[0].ident.to_string();
        if t.path.segments.len() == 1 && PRIMITIVES.contains(&first.as_str()) {
            return;
        }
        // `core::ffi::c_uint` stays as it is: `core` is in every crate's extern prelude.
        if ["core", "std", "alloc"].contains(&first.as_str()) {
            return;
        }
        let prefix = self.0;
        let rest = &t.path;
        t.path = syn::parse_quote!(#prefix::#rest);
    }
}

fn qualified(decl: &Decl, types: &Path) -> (TokenStream, TokenStream) {
    let mut q = Qualify(types);
    let args: Vec<TokenStream> = decl
        .args
        .iter()
        .map(|(n, t)| {
            let mut t = t.clone();
            q.visit_type_mut(&mut t);
            quote!(#n: #t)
        })
        .collect();
    let mut ret = decl.ret.clone();
    q.visit_type_mut(&mut ret);
    (quote!(#(#args),*), ret.into_token_stream())
}

enum Input {
    Plain(Path),
    Routes(Routes),
}

struct Routes {
    callback: Path,
    types: Path,
    symbols: LitStr,
    undeclared: LitStr,
    default: LitStr,
    /// Each implemented export with the module its body is in (`crate` when none is named).
    implemented: Vec<(Path, Ident)>,
    alias: Vec<(Ident, Ident)>,
    forwarded: Vec<Ident>,
    unsupported: Vec<(LitStr, Vec<Ident>)>,
}

fn ident_list(input: ParseStream) -> syn::Result<Vec<Ident>> {
    let content;
    bracketed!(content in input);
    Ok(Punctuated::<Ident, Token![,]>::parse_terminated(&content)?
        .into_iter()
        .collect())
}

impl Parse for Input {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.peek2(Token![:]) && !input.peek2(Token![::]) {
            return Ok(Input::Routes(input.parse()?));
        }
        let p: Path = input.parse()?;
        if !input.is_empty() {
            return Err(input.error("expected `cuda_exports!(callback)` or a route table"));
        }
        Ok(Input::Plain(p))
    }
}

impl Parse for Routes {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let (mut callback, mut types, mut symbols, mut undeclared, mut default) =
            (None, None, None, None, None);
        let mut implemented = Vec::new();
        let mut alias = Vec::new();
        let mut forwarded = Vec::new();
        let mut unsupported = Vec::new();
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            let k = key.to_string();
            let reason: Option<LitStr> = if k == "unsupported" {
                Some(input.parse()?)
            } else {
                None
            };
            // `implemented in api::module: [...]` names where the bodies are.
            let module: Path = if k == "implemented" && input.peek(Token![in]) {
                input.parse::<Token![in]>()?;
                let m: Path = input.parse()?;
                syn::parse_quote!(crate::#m)
            } else {
                syn::parse_quote!(crate)
            };
            input.parse::<Token![:]>()?;
            match k.as_str() {
                "callback" => callback = Some(input.parse()?),
                "types" => types = Some(input.parse()?),
                "symbols" => symbols = Some(input.parse()?),
                "undeclared" => undeclared = Some(input.parse()?),
                "default" => default = Some(input.parse()?),
                "implemented" => {
                    implemented.extend(ident_list(input)?.into_iter().map(|n| (module.clone(), n)))
                }
                "forwarded" => forwarded.extend(ident_list(input)?),
                "unsupported" => unsupported.push((reason.expect("parsed"), ident_list(input)?)),
                "alias" => {
                    let content;
                    bracketed!(content in input);
                    while !content.is_empty() {
                        let name: Ident = content.parse()?;
                        content.parse::<Token![=]>()?;
                        let target: Ident = content.parse()?;
                        alias.push((name, target));
                        if !content.is_empty() {
                            content.parse::<Token![,]>()?;
                        }
                    }
                }
                _ => return Err(syn::Error::new_spanned(key, "unknown key")),
            }
            input.parse::<Token![;]>()?;
        }
        fn need<T>(v: Option<T>, what: &str) -> syn::Result<T> {
            v.ok_or_else(|| syn::Error::new(Span::call_site(), format!("`{what}:` is missing")))
        }
        Ok(Routes {
            callback: need(callback, "callback")?,
            types: need(types, "types")?,
            symbols: need(symbols, "symbols")?,
            undeclared: need(undeclared, "undeclared")?,
            default: need(default, "default")?,
            implemented,
            alias,
            forwarded,
            unsupported,
        })
    }
}

fn expand(input: TokenStream, manifest_dir: &str) -> syn::Result<TokenStream> {
    let decls = declarations(DECLS)?;
    match syn::parse2::<Input>(input)? {
        Input::Plain(callback) => {
            let types: Path = syn::parse_quote!(::vgpu_cuda_decls);
            let fns = decls.iter().map(|(name, d)| {
                let name = Ident::new(name, Span::call_site());
                let (args, ret) = qualified(d, &types);
                quote!(fn #name(#args) -> #ret;)
            });
            Ok(quote!(#callback! { #(#fns)* }))
        }
        Input::Routes(r) => expand_routes(r, &decls, manifest_dir),
    }
}

enum Route {
    /// In this module.
    Implemented(Path),
    Alias(Ident),
    Forwarded,
    Unsupported(LitStr),
}

fn expand_routes(
    r: Routes,
    decls: &BTreeMap<String, Decl>,
    manifest_dir: &str,
) -> syn::Result<TokenStream> {
    let path = std::path::Path::new(manifest_dir).join(r.symbols.value());
    let text = std::fs::read_to_string(&path).map_err(|e| {
        syn::Error::new_spanned(&r.symbols, format!("cannot read {}: {e}", path.display()))
    })?;
    let symbols: BTreeSet<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();

    let mut routes: BTreeMap<String, Route> = BTreeMap::new();
    let mut add = |name: &Ident, route: Route| -> syn::Result<()> {
        let n = name.to_string();
        if !decls.contains_key(&n) && !symbols.contains(&n) {
            return Err(syn::Error::new_spanned(
                name,
                format!(
                    "{n} is neither declared in CUDA 13.0's headers nor exported by the driver"
                ),
            ));
        }
        if routes.insert(n.clone(), route).is_some() {
            return Err(syn::Error::new_spanned(name, format!("{n} has two routes")));
        }
        Ok(())
    };
    for (module, n) in &r.implemented {
        add(n, Route::Implemented(module.clone()))?;
    }
    for n in &r.forwarded {
        if !decls.contains_key(&n.to_string()) {
            return Err(syn::Error::new_spanned(
                n,
                "only a declared function can be forwarded",
            ));
        }
        add(n, Route::Forwarded)?;
    }
    for (reason, names) in &r.unsupported {
        for n in names {
            add(n, Route::Unsupported(reason.clone()))?;
        }
    }
    for (n, target) in &r.alias {
        add(n, Route::Alias(target.clone()))?;
    }
    for (n, target) in &r.alias {
        if !matches!(
            routes.get(&target.to_string()),
            Some(Route::Implemented(_) | Route::Forwarded)
        ) {
            return Err(syn::Error::new_spanned(
                target,
                format!("the target of {n} is not implemented or forwarded"),
            ));
        }
        let sig = |n: &Ident| {
            decls.get(&n.to_string()).map(|d| {
                let types: Vec<String> = d
                    .args
                    .iter()
                    .map(|(_, t)| t.to_token_stream().to_string())
                    .collect();
                (types, d.ret.to_token_stream().to_string())
            })
        };
        match (sig(n), sig(target)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(_), Some(_)) => {
                return Err(syn::Error::new_spanned(
                    n,
                    format!("{n} and {target} are declared with different signatures"),
                ));
            }
            _ => {
                return Err(syn::Error::new_spanned(
                    n,
                    "an alias and its target must both be declared",
                ));
            }
        }
    }

    let exported: BTreeSet<&String> = symbols.iter().chain(routes.keys()).collect();
    let mut entries = Vec::with_capacity(exported.len());
    for name in exported {
        let id = Ident::new(name, Span::call_site());
        let (route, extra) = match routes.get(name) {
            Some(Route::Implemented(module)) => (quote!(implemented), quote!(#module)),
            // The target's path: its body's module, or the generated forward beside the alias.
            Some(Route::Alias(t)) => match routes.get(&t.to_string()) {
                Some(Route::Implemented(module)) => (quote!(alias), quote!(#module::#t)),
                _ => (quote!(alias), quote!(self::#t)),
            },
            Some(Route::Forwarded) => (quote!(forwarded), quote!()),
            Some(Route::Unsupported(reason)) => (quote!(unsupported), quote!(#reason)),
            None if decls.contains_key(name) => {
                let d = &r.default;
                (quote!(unsupported), quote!(#d))
            }
            None => {
                let u = &r.undeclared;
                (quote!(unsupported), quote!(#u))
            }
        };
        let sig = decls.get(name).map(|d| {
            let (args, ret) = qualified(d, &r.types);
            quote!((#args) -> #ret)
        });
        entries.push(quote!(#route [#extra] fn #id #sig;));
    }
    let callback = &r.callback;
    let symbols_path = path.display().to_string();
    Ok(quote! {
        // The symbol list is an input: rebuild when it changes.
        const _: &str = include_str!(#symbols_path);
        #callback! { #(#entries)* }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(body: TokenStream) -> syn::Result<String> {
        let input = quote! {
            callback: cb;
            types: decls;
            symbols: "../libcuda/symbols/libcuda-580-symbols.txt";
            undeclared: "undeclared";
            default: "default";
            #body
        };
        expand(input, env!("CARGO_MANIFEST_DIR")).map(|t| t.to_string())
    }

    /// The header yields every function, with its arguments; the legacy and per-thread
    /// names are declared too (`__CUDA_API_VERSION_INTERNAL`). Fails if the parser drops
    /// functions or arguments.
    #[test]
    fn declarations_come_from_the_header() {
        let d = declarations(DECLS).unwrap();
        assert_eq!(d.len(), 634);
        for n in [
            "cuInit",
            "cuMemAlloc",
            "cuMemAlloc_v2",
            "cuMemcpy_ptds",
            "cuLaunchKernel_ptsz",
        ] {
            assert!(d.contains_key(n), "{n}");
        }
        let m = &d["cuMemAlloc_v2"];
        let args: Vec<String> = m
            .args
            .iter()
            .map(|(n, t)| format!("{n}: {}", t.to_token_stream()))
            .collect();
        assert_eq!(args, ["dptr: * mut CUdeviceptr", "bytesize: usize"]);
        assert_eq!(d["cuLaunchKernel"].args.len(), 11);
    }

    /// Fails if types are left bare (they would not resolve in the shim) or primitives and
    /// `core` paths are prefixed.
    #[test]
    fn types_are_qualified() {
        let d = declarations(DECLS).unwrap();
        let (args, ret) = qualified(&d["cuStreamGetId"], &syn::parse_quote!(decls));
        assert_eq!(
            args.to_string(),
            "hStream : decls :: CUstream , streamId : * mut core :: ffi :: c_ulonglong"
        );
        assert_eq!(ret.to_string(), "decls :: CUresult");
    }

    /// Every export gets one route: named ones theirs, declared ones the default reason,
    /// undeclared ones the "no declaration" reason. Fails if a class of export is dropped or
    /// gets the wrong reason.
    #[test]
    fn every_export_gets_a_route() {
        let out = routes(quote! {
            implemented: [cuInit, cuProfilerStart];
            implemented in api::context: [cuCtxDestroy_v2];
            alias: [cuCtxDestroy = cuCtxDestroy_v2];
            forwarded: [cuCtxGetId];
            unsupported "no GL": [cuGLInit];
        })
        .unwrap();
        assert_eq!(out.matches(" fn cu").count(), 674);
        assert!(
            out.contains(
                "implemented [crate] fn cuInit (Flags : core :: ffi :: c_uint) -> decls :: CUresult ;"
            ),
            "{out}"
        );
        assert!(out.contains("implemented [crate] fn cuProfilerStart ;"));
        assert!(out.contains("implemented [crate :: api :: context] fn cuCtxDestroy_v2 ("));
        // An alias names its target by the module its body is in.
        assert!(out.contains(
            "alias [crate :: api :: context :: cuCtxDestroy_v2] fn cuCtxDestroy (ctx : decls :: CUcontext)"
        ));
        assert!(out.contains("forwarded [] fn cuCtxGetId ("));
        assert!(out.contains("unsupported [\"no GL\"] fn cuGLInit ;"));
        assert!(out.contains("unsupported [\"undeclared\"] fn cuGLCtxCreate_v2 ;"));
        assert!(out.contains("unsupported [\"default\"] fn cuMemAlloc_v2 (dptr : * mut decls :: CUdeviceptr , bytesize : usize)"));
    }

    /// Mistakes in the table are refused. Fails if any check is removed.
    #[test]
    fn a_wrong_table_is_refused() {
        let err = |body| routes(body).unwrap_err().to_string();
        assert!(err(quote!(implemented: [cuNoSuchThing];)).contains("neither declared"));
        assert!(
            err(quote!(implemented: [cuInit]; unsupported "x": [cuInit];)).contains("two routes")
        );
        assert!(
            err(quote!(implemented: [cuModuleUnload]; alias: [cuLibraryUnload = cuModuleUnload];))
                .contains("different signatures")
        );
        assert!(err(quote!(alias: [cuCtxDestroy = cuCtxDestroy_v2];)).contains("not implemented"));
        assert!(err(quote!(forwarded: [cuGLInit];)).contains("only a declared"));
        assert!(routes(quote!(implemented: [cuInit];)).is_ok());
    }

    /// The plain form hands every declared function to the callback.
    #[test]
    fn plain_form_lists_every_declaration() {
        let out = expand(quote!(cb), "").unwrap().to_string();
        assert!(out.starts_with("cb ! {"));
        assert_eq!(out.matches(" fn cu").count(), 634);
        assert!(out.contains("fn cuStreamGetId (hStream : :: vgpu_cuda_decls :: CUstream"));
    }
}

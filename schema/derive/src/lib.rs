//! `#[derive(Introspect)]`: the shape of a schema type in
//! `query-qmp-schema`, read from the serde attributes that decide what the
//! type accepts, so the two cannot drift apart.
//!
//! A struct with named fields becomes a QAPI object (and lends its members
//! to unions through `ObjectMembers`): each field a member
//! named as serde names it (`rename_all`, `rename`), optional when its type
//! is `Option<_>` or serde fills it in (`default`); `skip`ped fields are not
//! members. An enum of unit variants becomes a QAPI enum. Anything serde
//! would read differently (`flatten`, tagged or untagged enums, enums with
//! data) is refused at compile time (an enum also gets `EnumValues`, its
//! values as strings): such a type writes its `Introspect` by
//! hand. `#[introspect(features("deprecated", ...))]` on a type, field or
//! variant gives it QAPI features.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::quote;
use syn::{
    parse_macro_input, Attribute, Data, DeriveInput, Fields, GenericArgument, LitStr,
    PathArguments, Type,
};

#[proc_macro_derive(Introspect, attributes(introspect))]
pub fn derive_introspect(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<Tokens> {
    let mut input = input.clone();
    for param in input.generics.type_params_mut() {
        param
            .bounds
            .push(syn::parse_quote!(::schema::introspect::Introspect));
        param.bounds.push(syn::parse_quote!('static));
    }
    let input = &input;
    let container = SerdeAttrs::read(&input.attrs)?;
    let type_features = introspect_features(&input.attrs)?;
    match &input.data {
        Data::Struct(data) => {
            let Fields::Named(fields) = &data.fields else {
                return Err(syn::Error::new_spanned(
                    &input.ident,
                    "Introspect: only structs with named fields are QAPI objects",
                ));
            };
            let mut members = Vec::new();
            for field in &fields.named {
                let attrs = SerdeAttrs::read(&field.attrs)?;
                if attrs.skip {
                    continue;
                }
                if attrs.flatten {
                    return Err(syn::Error::new_spanned(
                        field,
                        "Introspect: flattened fields need a hand-written Introspect",
                    ));
                }
                let ident = field.ident.as_ref().expect("named field");
                let name = attrs.rename.unwrap_or_else(|| {
                    rename(&ident.to_string(), container.rename_all.as_deref(), true)
                });
                let (ty, is_option) = match option_inner(&field.ty) {
                    Some(inner) => (inner, true),
                    None => (&field.ty, false),
                };
                let optional = is_option || attrs.default || container.default;
                let member_features = introspect_features(&field.attrs)?;
                members.push(quote! {
                    ::schema::introspect::Member::new::<#ty>(
                        schema, #name, #optional, &[#(#member_features),*],
                    )
                });
            }
            let ident = &input.ident;
            let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
            Ok(quote! {
                impl #impl_generics ::schema::introspect::ObjectMembers for #ident #type_generics #where_clause {
                    fn members(schema: &mut ::schema::introspect::SchemaBuilder) -> ::std::vec::Vec<::schema::introspect::Member> {
                        vec![#(#members),*]
                    }
                }
                impl #impl_generics ::schema::introspect::Introspect for #ident #type_generics #where_clause {
                    fn introspect(schema: &mut ::schema::introspect::SchemaBuilder) -> ::std::string::String {
                        schema.object::<Self>(
                            &[#(#type_features),*],
                            <Self as ::schema::introspect::ObjectMembers>::members,
                        )
                    }
                }
            })
        }
        Data::Enum(data) => {
            if container.tagged {
                return Err(syn::Error::new_spanned(
                    &input.ident,
                    "Introspect: tagged enums need a hand-written Introspect",
                ));
            }
            let mut values = Vec::new();
            let mut values_names = Vec::new();
            for variant in &data.variants {
                if !matches!(variant.fields, Fields::Unit) {
                    return Err(syn::Error::new_spanned(
                        variant,
                        "Introspect: only enums of unit variants are QAPI enums",
                    ));
                }
                let attrs = SerdeAttrs::read(&variant.attrs)?;
                if attrs.skip {
                    continue;
                }
                let name = attrs.rename.unwrap_or_else(|| {
                    rename(
                        &variant.ident.to_string(),
                        container.rename_all.as_deref(),
                        false,
                    )
                });
                let value_features = introspect_features(&variant.attrs)?;
                values_names.push(name.clone());
                values.push(quote! {
                    ::schema::introspect::EnumValue { name: #name, features: &[#(#value_features),*] }
                });
            }
            let names = values_names;
            let ident = &input.ident;
            Ok(quote! {
                impl ::schema::introspect::EnumValues for #ident {
                    const VALUES: &'static [&'static str] = &[#(#names),*];
                }
                impl ::schema::introspect::Introspect for #ident {
                    fn introspect(schema: &mut ::schema::introspect::SchemaBuilder) -> ::std::string::String {
                        schema.enumeration::<Self>(&[#(#type_features),*], &[#(#values),*])
                    }
                }
            })
        }
        Data::Union(_) => Err(syn::Error::new_spanned(
            &input.ident,
            "Introspect: unions are not schema types",
        )),
    }
}

/// What the serde attributes of a container, field or variant say that
/// matters to the shape.
#[derive(Default)]
struct SerdeAttrs {
    rename_all: Option<String>,
    rename: Option<String>,
    default: bool,
    skip: bool,
    flatten: bool,
    tagged: bool,
}

impl SerdeAttrs {
    fn read(attrs: &[Attribute]) -> syn::Result<Self> {
        let mut found = Self::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
            attr.parse_nested_meta(|meta| {
                let key = meta
                    .path
                    .get_ident()
                    .map(|i| i.to_string())
                    .unwrap_or_default();
                match key.as_str() {
                    "rename_all" => {
                        found.rename_all = Some(meta.value()?.parse::<LitStr>()?.value())
                    }
                    "rename" => found.rename = Some(meta.value()?.parse::<LitStr>()?.value()),
                    "default" => {
                        found.default = true;
                        if meta.input.peek(syn::Token![=]) {
                            meta.value()?.parse::<LitStr>()?;
                        }
                    }
                    "skip" | "skip_deserializing" => found.skip = true,
                    "flatten" => found.flatten = true,
                    "tag" | "content" | "untagged" => {
                        found.tagged = true;
                        if meta.input.peek(syn::Token![=]) {
                            meta.value()?.parse::<LitStr>()?;
                        }
                    }
                    _ => {
                        // Attributes that do not change the accepted shape
                        // (skip_serializing_if, deny_unknown_fields, ...).
                        if meta.input.peek(syn::Token![=]) {
                            meta.value()?.parse::<syn::Expr>()?;
                        }
                    }
                }
                Ok(())
            })?;
        }
        Ok(found)
    }
}

/// The features named by `#[introspect(features("a", "b"))]`.
fn introspect_features(attrs: &[Attribute]) -> syn::Result<Vec<LitStr>> {
    let mut names = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("introspect")) {
        attr.parse_nested_meta(|meta| {
            if !meta.path.is_ident("features") {
                return Err(meta.error("expected `features(\"name\", ...)`"));
            }
            let content;
            syn::parenthesized!(content in meta.input);
            names.extend(content.parse_terminated(|p| p.parse::<LitStr>(), syn::Token![,])?);
            Ok(())
        })?;
    }
    Ok(names)
}

/// The `T` of an `Option<T>` field.
fn option_inner(ty: &Type) -> Option<&Type> {
    let ty = match ty {
        // A type passed through `macro_rules!` arrives wrapped in a group.
        Type::Group(group) => &group.elem,
        ty => ty,
    };
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(inner) => Some(inner),
        _ => None,
    }
}

/// A field's or variant's name under serde's `rename_all` rule.
fn rename(ident: &str, rule: Option<&str>, is_field: bool) -> String {
    let ident = ident.strip_prefix("r#").unwrap_or(ident);
    let snake = if is_field {
        ident.to_string()
    } else {
        let mut snake = String::new();
        for (i, c) in ident.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                snake.push('_');
            }
            snake.extend(c.to_lowercase());
        }
        snake
    };
    match rule {
        Some("kebab-case") => snake.replace('_', "-"),
        Some("snake_case") => snake,
        Some("lowercase") => snake.replace('_', ""),
        _ => ident.to_string(),
    }
}

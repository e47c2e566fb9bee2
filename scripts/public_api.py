#!/usr/bin/env python3
"""The library's public API as a sorted text list, one item per line, from rustdoc's JSON.

    RUSTC_BOOTSTRAP=1 RUSTDOCFLAGS="-Z unstable-options --output-format json" \
        cargo doc --workspace --no-deps
    python3 scripts/public_api.py target/doc/linear_softmax.json > crates/linear-softmax/public-api.txt

CI runs the same and diffs the result against the committed `crates/linear-softmax/public-api.txt`,
so every change to the public API is a visible diff (`bash scripts/public_api.sh --bless`
rewrites the snapshot). Items are listed at every path a user can name them by, with their
signature: modules, structs with their public fields, enums with their variants, functions and
methods with their parameters and return type, traits, constants, type aliases, and the names
of the traits each public type implements (derives included, auto and blanket traits left out).
"""

import json
import sys

AUTO_TRAITS = {
    "Send", "Sync", "Unpin", "UnwindSafe", "RefUnwindSafe", "Freeze", "StructuralPartialEq",
}


def render_generic_args(args):
    if not args:
        return ""
    if "angle_bracketed" in args:
        parts = []
        for arg in args["angle_bracketed"].get("args", []):
            if "type" in arg:
                parts.append(render_type(arg["type"]))
            elif "const" in arg:
                const = arg["const"]
                parts.append(const.get("expr") or const.get("value") or "_")
            elif "lifetime" in arg:
                parts.append(arg["lifetime"])
            else:
                parts.append("_")
        for constraint in args["angle_bracketed"].get("constraints", []):
            binding = constraint.get("binding", {})
            if "equality" in binding and "type" in binding["equality"]:
                parts.append(f"{constraint['name']} = {render_type(binding['equality']['type'])}")
        return f"<{', '.join(parts)}>" if parts else ""
    if "parenthesized" in args:
        inputs = ", ".join(render_type(t) for t in args["parenthesized"].get("inputs", []))
        output = args["parenthesized"].get("output")
        return f"({inputs})" + (f" -> {render_type(output)}" if output else "")
    return ""


def render_path(path):
    name = path.get("path") or path.get("name") or "?"
    if name.startswith("crate::"):
        # A private module path inside this crate: the item's own name is what users see.
        name = name.rsplit("::", 1)[-1]
    return name + render_generic_args(path.get("args"))


def render_bound(bound):
    if "trait_bound" in bound:
        return render_path(bound["trait_bound"]["trait"])
    if "outlives" in bound:
        return bound["outlives"]
    return "?"


def render_type(ty):
    if ty is None:
        return "()"
    if "resolved_path" in ty:
        return render_path(ty["resolved_path"])
    if "generic" in ty:
        return ty["generic"]
    if "primitive" in ty:
        return ty["primitive"]
    if "borrowed_ref" in ty:
        ref = ty["borrowed_ref"]
        mutable = "mut " if ref.get("is_mutable") else ""
        lifetime = f"{ref['lifetime']} " if ref.get("lifetime") else ""
        return f"&{lifetime}{mutable}{render_type(ref['type'])}"
    if "tuple" in ty:
        return f"({', '.join(render_type(t) for t in ty['tuple'])})"
    if "slice" in ty:
        return f"[{render_type(ty['slice'])}]"
    if "array" in ty:
        return f"[{render_type(ty['array']['type'])}; {ty['array']['len']}]"
    if "impl_trait" in ty:
        return "impl " + " + ".join(render_bound(b) for b in ty["impl_trait"])
    if "dyn_trait" in ty:
        return "dyn " + " + ".join(render_path(t["trait"]) for t in ty["dyn_trait"]["traits"])
    if "qualified_path" in ty:
        qualified = ty["qualified_path"]
        return f"<{render_type(qualified['self_type'])}>::{qualified['name']}"
    if "raw_pointer" in ty:
        pointer = ty["raw_pointer"]
        return f"*{'mut' if pointer.get('is_mutable') else 'const'} {render_type(pointer['type'])}"
    if "function_pointer" in ty:
        return "fn(..)"
    return "?"


def render_generics(generics):
    params = []
    for param in (generics or {}).get("params", []):
        kind = param.get("kind", {})
        if "const" in kind:
            params.append(f"const {param['name']}: {render_type(kind['const']['type'])}")
        elif "type" in kind:
            if kind["type"].get("is_synthetic"):
                continue
            bounds = " + ".join(render_bound(b) for b in kind["type"].get("bounds", []))
            params.append(param["name"] + (f": {bounds}" if bounds else ""))
        elif "lifetime" in kind:
            params.append(param["name"])
    return f"<{', '.join(params)}>" if params else ""


def render_fn(name, function):
    sig = function["sig"]
    inputs = []
    for param_name, ty in sig["inputs"]:
        if param_name == "self":
            inputs.append(render_type(ty).replace("&Self", "&self").replace("&mut Self", "&mut self")
                          if ty.get("borrowed_ref") else "self")
        else:
            inputs.append(f"{param_name}: {render_type(ty)}")
    output = f" -> {render_type(sig['output'])}" if sig.get("output") else ""
    return f"fn {name}{render_generics(function.get('generics'))}({', '.join(inputs)}){output}"


class Api:
    def __init__(self, doc):
        self.index = doc["index"]
        self.lines = set()
        self.seen = set()

    def item(self, item_id):
        return self.index.get(str(item_id))

    def public(self, item):
        return item.get("visibility") == "public"

    def walk_module(self, module_id, path):
        module = self.item(module_id)
        for child_id in module["inner"]["module"]["items"]:
            child = self.item(child_id)
            if child is None or not self.public(child):
                continue
            inner = child["inner"]
            if "use" in inner:
                use = inner["use"]
                target = self.item(use["id"]) if use.get("id") is not None else None
                if target is None:
                    self.lines.add(f"pub use {path}::{use['name']} = {use['source']}")
                    continue
                if use.get("is_glob"):
                    self.walk_module(use["id"], path)
                    continue
                self.add(target, use["id"], f"{path}::{use['name']}", use["name"])
            else:
                self.add(child, child_id, f"{path}::{child['name']}", child["name"])

    def add(self, item, item_id, path, name):
        inner = item["inner"]
        kind = next(iter(inner))
        if kind == "module":
            self.lines.add(f"pub mod {path}")
            self.walk_module(item_id, path)
        elif kind == "function":
            prefix = path.rsplit("::", 1)[0]
            self.lines.add(f"pub {render_fn(prefix + '::' + name, inner['function'])}")
        elif kind == "struct":
            struct = inner["struct"]
            self.lines.add(f"pub struct {path}{render_generics(struct.get('generics'))}")
            fields = struct.get("kind", {})
            for field_id in fields.get("plain", {}).get("fields", []) if isinstance(fields, dict) else []:
                field = self.item(field_id)
                if field and self.public(field):
                    self.lines.add(
                        f"pub {path}::{field['name']}: {render_type(field['inner']['struct_field'])}")
            self.impls(path, struct.get("impls", []))
        elif kind == "enum":
            enum = inner["enum"]
            self.lines.add(f"pub enum {path}{render_generics(enum.get('generics'))}")
            for variant_id in enum.get("variants", []):
                variant = self.item(variant_id)
                self.lines.add(f"{path}::{variant['name']}{self.variant_fields(variant)}")
            self.impls(path, enum.get("impls", []))
        elif kind == "trait":
            self.lines.add(f"pub trait {path}")
            for method_id in inner["trait"].get("items", []):
                method = self.item(method_id)
                if method and "function" in method["inner"]:
                    self.lines.add(f"{path}::{render_fn(method['name'], method['inner']['function'])}")
        elif kind == "constant":
            self.lines.add(f"pub const {path}: {render_type(inner['constant']['type'])}")
        elif kind == "type_alias":
            self.lines.add(f"pub type {path} = {render_type(inner['type_alias']['type'])}")
        else:
            self.lines.add(f"pub {kind} {path}")

    def variant_fields(self, variant):
        kind = variant["inner"]["variant"]["kind"]
        if not isinstance(kind, dict):
            return ""
        if "tuple" in kind:
            fields = [self.item(f) for f in kind["tuple"] if f is not None]
            return "(" + ", ".join(render_type(f["inner"]["struct_field"]) for f in fields) + ")"
        if "struct" in kind:
            fields = [self.item(f) for f in kind["struct"]["fields"]]
            rendered = (f"{f['name']}: {render_type(f['inner']['struct_field'])}" for f in fields)
            return " { " + ", ".join(rendered) + " }"
        return ""

    def impls(self, path, impl_ids):
        for impl_id in impl_ids:
            impl = self.item(impl_id)
            if impl is None:
                continue
            details = impl["inner"]["impl"]
            if details.get("is_synthetic") or details.get("blanket_impl"):
                continue
            trait = details.get("trait")
            if trait is not None:
                trait_name = render_path(trait)
                if trait_name.split("<")[0].split("::")[-1] not in AUTO_TRAITS:
                    self.lines.add(f"impl {trait_name} for {path}")
                continue
            for method_id in details.get("items", []):
                method = self.item(method_id)
                if method is None or not self.public(method):
                    continue
                inner = method["inner"]
                if "function" in inner:
                    method_path = path + "::" + method["name"]
                    self.lines.add(f"pub {render_fn(method_path, inner['function'])}")
                elif "assoc_const" in inner:
                    self.lines.add(f"pub const {path}::{method['name']}: "
                                   f"{render_type(inner['assoc_const']['type'])}")


def main():
    with open(sys.argv[1]) as file:
        doc = json.load(file)
    api = Api(doc)
    root = doc["index"][str(doc["root"])]
    api.walk_module(doc["root"], root["name"])
    for line in sorted(api.lines):
        print(line)


if __name__ == "__main__":
    main()

//! Resource specifications (section 4.10) and their XML form.
//!
//! The class hierarchy of the specification's figure 3 maps to XML elements:
//!
//! - `PoolRSpec`: a resource pool; may restrict the VM type and name the slice authorities
//!   (with their certificates) allowed to create slices from it (section 4.9).
//! - `SliceRSpec` with a `vm_type` attribute, or one of the VM-type-specific classes
//!   `VServerSlice` (linux-vserver-x86), `KvmSlice` (linux-kvm-x86), `XenSlice`
//!   (linux-xen-x86): one slice's VM, with the users' ssh keys and the bootscript.
//!
//! Every class carries a `resources` element whose attributes are those of
//! [`Resources`]. The schema is `docs/rspec.rng`; examples are in `examples/rspec/`.
//!
//! ```xml
//! <VServerSlice xmlns="urn:plab:rspec:1" name="plc.princeton.codeen">
//!   <resources cpu_share="1" disk_quota="5" mem_limit="256" base_rate="1" burst_rate="100" sustained_rate="1.5"/>
//!   <key>ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... alice@princeton.edu</key>
//!   <bootscript>#!/bin/sh
//! echo hello</bootscript>
//! </VServerSlice>
//! ```

use crate::resources::{Quantity, Resources};
use crate::slice_name::SliceName;
use crate::vm_type::VmType;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use std::fmt::Write as _;

/// The XML namespace of RSpec documents.
pub const NAMESPACE: &str = "urn:plab:rspec:1";

/// A parsed RSpec: its class and its resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RSpec {
    /// Which class of the hierarchy this is.
    pub class: RSpecClass,
    /// The resources the object holds.
    pub resources: Resources,
}

/// The subclass of an RSpec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RSpecClass {
    /// A resource pool.
    Pool(PoolRSpec),
    /// A slice's VM on this node.
    Slice(SliceRSpec),
}

/// A resource pool (`PoolRSpec`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolRSpec {
    /// When set, VMs made from this pool must be of this type.
    pub vm_type: Option<VmType>,
    /// Slice authorities allowed to create slices from this pool (section 4.9).
    pub slice_authorities: Vec<SliceAuthorityRef>,
}

/// A slice authority named in a pool: who may create slices from it, where it is
/// reached, and the certificate that authenticates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceAuthorityRef {
    /// The authority's name (`plc`, `plc.japan`).
    pub name: SliceName,
    /// The authority's server URL.
    pub url: String,
    /// The authority's certificate, PEM.
    pub certificate: Option<String>,
}

/// A slice's VM (`SliceRSpec` and its VM-type-specific classes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceRSpec {
    /// The slice, when the document names it.
    pub name: Option<SliceName>,
    /// The VM type.
    pub vm_type: VmType,
    /// The slice users' ssh public keys.
    pub keys: Vec<SshKey>,
    /// The bootscript, run at every VM start.
    pub bootscript: Option<String>,
}

/// An ssh public key in OpenSSH one-line form, validated and normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshKey(String);

impl SshKey {
    /// Parses an OpenSSH public key line (`ssh-ed25519 AAAA... comment`).
    pub fn parse(s: &str) -> Result<SshKey, String> {
        let s = s.trim();
        if s.contains(['\n', '\r']) {
            return Err("an ssh key must be one line".into());
        }
        let key = ssh_key::PublicKey::from_openssh(s).map_err(|e| format!("not an OpenSSH public key ({e})"))?;
        key.to_openssh().map(SshKey).map_err(|e| e.to_string())
    }

    /// The key as an `authorized_keys` line.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for SshKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SshKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SshKey, D::Error> {
        let s = String::deserialize(d)?;
        SshKey::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A malformed or invalid RSpec document, with the position of the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct RSpecError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl RSpec {
    /// The specification's default VM, as a slice RSpec of the given type.
    pub fn default_slice(vm_type: VmType) -> RSpec {
        RSpec {
            class: RSpecClass::Slice(SliceRSpec { name: None, vm_type, keys: vec![], bootscript: None }),
            resources: Resources::spec_default(),
        }
    }

    /// The slice part, when this is a slice RSpec.
    pub fn slice(&self) -> Option<&SliceRSpec> {
        match &self.class {
            RSpecClass::Slice(s) => Some(s),
            RSpecClass::Pool(_) => None,
        }
    }

    /// The VM type this RSpec asks for or is restricted to, if any.
    pub fn vm_type(&self) -> Option<VmType> {
        match &self.class {
            RSpecClass::Slice(s) => Some(s.vm_type),
            RSpecClass::Pool(p) => p.vm_type,
        }
    }

    /// The slice authorities a pool RSpec names (none for a slice RSpec).
    pub fn authorities(&self) -> impl Iterator<Item = &SliceName> {
        let list: &[SliceAuthorityRef] = match &self.class {
            RSpecClass::Pool(p) => &p.slice_authorities,
            RSpecClass::Slice(_) => &[],
        };
        list.iter().map(|a| &a.name)
    }

    /// The XML element name of this RSpec's class.
    pub fn class_name(&self) -> &'static str {
        match &self.class {
            RSpecClass::Pool(_) => "PoolRSpec",
            RSpecClass::Slice(s) => s.vm_type.slice_class(),
        }
    }

    /// Parses an RSpec XML document.
    pub fn from_xml(xml: &str) -> Result<RSpec, RSpecError> {
        Parser { xml, reader: Reader::from_str(xml) }.document()
    }

    /// Writes the RSpec as an XML document.
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(256);
        let class = self.class_name();
        let _ = write!(out, "<{class} xmlns=\"{NAMESPACE}\"");
        match &self.class {
            RSpecClass::Pool(p) => {
                if let Some(t) = p.vm_type {
                    let _ = write!(out, " vm_type=\"{t}\"");
                }
            }
            RSpecClass::Slice(s) => {
                if let Some(n) = &s.name {
                    let _ = write!(out, " name=\"{n}\"");
                }
            }
        }
        out.push_str(">\n  <resources");
        for (attr, _) in Resources::ATTRIBUTES {
            let q = self.resources.get(attr).unwrap_or_default();
            let _ = write!(out, " {attr}=\"{q}\"");
        }
        out.push_str("/>\n");
        match &self.class {
            RSpecClass::Pool(p) => {
                for sa in &p.slice_authorities {
                    let _ = write!(out, "  <slice_authority name=\"{}\" url=\"{}\"", sa.name, esc(&sa.url));
                    match &sa.certificate {
                        Some(c) => {
                            let _ = writeln!(out, ">\n    <certificate>{}</certificate>\n  </slice_authority>", esc(c));
                        }
                        None => out.push_str("/>\n"),
                    }
                }
            }
            RSpecClass::Slice(s) => {
                for k in &s.keys {
                    let _ = writeln!(out, "  <key>{}</key>", esc(k.as_str()));
                }
                if let Some(b) = &s.bootscript {
                    let _ = writeln!(out, "  <bootscript>{}</bootscript>", esc(b));
                }
            }
        }
        let _ = writeln!(out, "</{class}>");
        out
    }
}

fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

struct Parser<'a> {
    xml: &'a str,
    reader: Reader<&'a [u8]>,
}

impl<'a> Parser<'a> {
    fn err_at(&self, pos: usize, message: impl Into<String>) -> RSpecError {
        let pos = pos.min(self.xml.len());
        let before = &self.xml.as_bytes()[..pos];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
        RSpecError { line, column, message: message.into() }
    }

    /// Reads the next event that matters, with the byte offset where it starts.
    fn next(&mut self) -> Result<(usize, Event<'a>), RSpecError> {
        loop {
            let pos = self.reader.buffer_position() as usize;
            let ev = self.reader.read_event().map_err(|e| {
                let at = self.reader.error_position() as usize;
                self.err_at(at, format!("malformed XML: {e}"))
            })?;
            match ev {
                Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => continue,
                Event::Text(ref t) if t.iter().all(|b| b.is_ascii_whitespace()) => continue,
                ev => return Ok((pos, ev)),
            }
        }
    }

    fn attrs(&self, pos: usize, e: &BytesStart<'_>) -> Result<Vec<(String, String)>, RSpecError> {
        let mut out = Vec::new();
        for a in e.attributes() {
            let a = a.map_err(|err| self.err_at(pos, format!("malformed attribute: {err}")))?;
            let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
            let value =
                a.unescape_value().map_err(|err| self.err_at(pos, format!("attribute {key}: {err}")))?.into_owned();
            out.push((key, value));
        }
        Ok(out)
    }

    fn document(mut self) -> Result<RSpec, RSpecError> {
        let (pos, ev) = self.next()?;
        let (start, empty) = match ev {
            Event::Start(s) => (s, false),
            Event::Empty(s) => (s, true),
            Event::Eof => return Err(self.err_at(pos, "empty document: expected an RSpec element")),
            _ => return Err(self.err_at(pos, "expected an RSpec element")),
        };
        let class = String::from_utf8_lossy(start.name().as_ref()).into_owned();
        let attrs = self.attrs(pos, &start)?;
        let mut name = None;
        let mut vm_type = None;
        for (k, v) in &attrs {
            match k.as_str() {
                "xmlns" if v == NAMESPACE => {}
                "xmlns" => return Err(self.err_at(pos, format!("xmlns must be {NAMESPACE:?}, not {v:?}"))),
                "name" if class != "PoolRSpec" => {
                    name = Some(SliceName::parse(v).map_err(|e| self.err_at(pos, format!("name: {e}")))?)
                }
                "vm_type" if class == "PoolRSpec" || class == "SliceRSpec" => {
                    vm_type = Some(VmType::parse(v).ok_or_else(|| {
                        self.err_at(pos, format!("vm_type: unknown VM type {v:?} (known: linux-vserver-x86, linux-kvm-x86, linux-xen-x86)"))
                    })?)
                }
                _ => return Err(self.err_at(pos, format!("{class}: unexpected attribute {k:?}"))),
            }
        }
        let class_type = VmType::ALL.iter().copied().find(|t| t.slice_class() == class);
        let mut rspec = match (class.as_str(), class_type) {
            ("PoolRSpec", _) => RSpec {
                class: RSpecClass::Pool(PoolRSpec { vm_type, slice_authorities: vec![] }),
                resources: Resources::default(),
            },
            ("SliceRSpec", _) => {
                let vm_type = vm_type.ok_or_else(|| self.err_at(pos, "SliceRSpec: missing attribute vm_type"))?;
                RSpec {
                    class: RSpecClass::Slice(SliceRSpec { name, vm_type, keys: vec![], bootscript: None }),
                    resources: Resources::default(),
                }
            }
            (_, Some(t)) => RSpec {
                class: RSpecClass::Slice(SliceRSpec { name, vm_type: t, keys: vec![], bootscript: None }),
                resources: Resources::default(),
            },
            _ => {
                return Err(self.err_at(
                    pos,
                    format!("unknown RSpec class <{class}> (expected PoolRSpec, SliceRSpec, VServerSlice, KvmSlice or XenSlice)"),
                ))
            }
        };
        if !empty {
            self.children(&class, &mut rspec)?;
        }
        let (pos, ev) = self.next()?;
        if !matches!(ev, Event::Eof) {
            return Err(self.err_at(pos, "content after the end of the RSpec element"));
        }
        Ok(rspec)
    }

    fn children(&mut self, class: &str, rspec: &mut RSpec) -> Result<(), RSpecError> {
        let mut seen_resources = false;
        loop {
            let (pos, ev) = self.next()?;
            let (start, empty) = match ev {
                Event::End(_) => return Ok(()),
                Event::Start(s) => (s, false),
                Event::Empty(s) => (s, true),
                Event::Eof => return Err(self.err_at(pos, format!("unexpected end of document inside <{class}>"))),
                _ => return Err(self.err_at(pos, format!("unexpected text inside <{class}>"))),
            };
            let child = String::from_utf8_lossy(start.name().as_ref()).into_owned();
            let attrs = self.attrs(pos, &start)?;
            match (child.as_str(), &mut rspec.class) {
                ("resources", _) => {
                    if seen_resources {
                        return Err(self.err_at(pos, "resources: given twice"));
                    }
                    seen_resources = true;
                    for (k, v) in &attrs {
                        let attr = Resources::ATTRIBUTES
                            .iter()
                            .map(|(a, _)| *a)
                            .find(|a| a == k)
                            .ok_or_else(|| self.err_at(pos, format!("resources: unknown attribute {k:?}")))?;
                        let q = Quantity::parse(attr, v).map_err(|e| self.err_at(pos, e.to_string()))?;
                        rspec.resources.set(attr, q);
                    }
                    if !empty {
                        self.end_of_empty(&child)?;
                    }
                }
                ("slice_authority", RSpecClass::Pool(p)) => {
                    let (mut name, mut url) = (None, None);
                    for (k, v) in attrs {
                        match k.as_str() {
                            "name" => {
                                name = Some(
                                    SliceName::parse(&v)
                                        .map_err(|e| self.err_at(pos, format!("slice_authority name: {e}")))?,
                                )
                            }
                            "url" => url = Some(v),
                            _ => return Err(self.err_at(pos, format!("slice_authority: unexpected attribute {k:?}"))),
                        }
                    }
                    let name = name.ok_or_else(|| self.err_at(pos, "slice_authority: missing attribute name"))?;
                    let url = url.ok_or_else(|| self.err_at(pos, "slice_authority: missing attribute url"))?;
                    let mut certificate = None;
                    if !empty {
                        loop {
                            let (cpos, ev) = self.next()?;
                            match ev {
                                Event::End(_) => break,
                                Event::Start(s) if s.name().as_ref() == b"certificate" && certificate.is_none() => {
                                    certificate = Some(self.text("certificate")?.trim().to_owned());
                                }
                                _ => {
                                    return Err(
                                        self.err_at(cpos, "slice_authority: only one <certificate> may appear inside")
                                    )
                                }
                            }
                        }
                    }
                    p.slice_authorities.push(SliceAuthorityRef { name, url, certificate });
                }
                ("key", RSpecClass::Slice(s)) if !empty => {
                    no_attrs(self, pos, &child, &attrs)?;
                    let text = self.text("key")?;
                    let key = SshKey::parse(&text).map_err(|e| self.err_at(pos, format!("key: {e}")))?;
                    s.keys.push(key);
                }
                ("bootscript", RSpecClass::Slice(s)) => {
                    no_attrs(self, pos, &child, &attrs)?;
                    if s.bootscript.is_some() {
                        return Err(self.err_at(pos, "bootscript: given twice"));
                    }
                    s.bootscript = Some(if empty { String::new() } else { self.text("bootscript")? });
                }
                _ => return Err(self.err_at(pos, format!("<{child}> is not allowed inside <{class}>"))),
            }
        }
    }

    /// Text content up to the end tag of `elem` (no child elements).
    fn text(&mut self, elem: &str) -> Result<String, RSpecError> {
        let mut out = String::new();
        loop {
            let pos = self.reader.buffer_position() as usize;
            let ev = self.reader.read_event().map_err(|e| {
                let at = self.reader.error_position() as usize;
                self.err_at(at, format!("malformed XML: {e}"))
            })?;
            match ev {
                Event::Text(t) => out.push_str(&t.unescape().map_err(|e| self.err_at(pos, format!("{elem}: {e}")))?),
                Event::CData(c) => out.push_str(&String::from_utf8_lossy(&c.into_inner())),
                Event::Comment(_) => {}
                Event::End(_) => return Ok(out),
                _ => return Err(self.err_at(pos, format!("{elem}: only text is allowed inside"))),
            }
        }
    }

    fn end_of_empty(&mut self, elem: &str) -> Result<(), RSpecError> {
        let (pos, ev) = self.next()?;
        match ev {
            Event::End(_) => Ok(()),
            _ => Err(self.err_at(pos, format!("{elem}: takes attributes only, no content"))),
        }
    }
}

fn no_attrs(p: &Parser<'_>, pos: usize, elem: &str, attrs: &[(String, String)]) -> Result<(), RSpecError> {
    match attrs.first() {
        Some((k, _)) => Err(p.err_at(pos, format!("{elem}: unexpected attribute {k:?}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINvd4JWqGILryt7c7j2YX8GNJTHiRXgCbcOQj+vURAyx alice@example.org";

    #[test]
    fn parses_a_vserver_slice() {
        let xml = format!(
            r#"<?xml version="1.0"?>
<VServerSlice xmlns="urn:plab:rspec:1" name="plc.princeton.codeen">
  <resources cpu_share="1" disk_quota="5" mem_limit="256" sustained_rate="1.5"/>
  <key>{KEY}</key>
  <bootscript><![CDATA[#!/bin/sh
echo "a < b"]]></bootscript>
</VServerSlice>"#
        );
        let r = RSpec::from_xml(&xml).unwrap();
        let s = r.slice().unwrap();
        assert_eq!(s.vm_type, VmType::LinuxVserverX86);
        assert_eq!(s.name.as_ref().unwrap().as_str(), "plc.princeton.codeen");
        assert_eq!(s.keys.len(), 1);
        assert_eq!(s.bootscript.as_deref(), Some("#!/bin/sh\necho \"a < b\""));
        assert_eq!(r.resources.mem_limit, Quantity::whole(256));
        assert_eq!(r.resources.base_rate, Quantity::ZERO);
        assert_eq!(RSpec::from_xml(&r.to_xml()).unwrap(), r);
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = RSpec::from_xml("<PoolRSpec>\n  <resources mem_limit=\"lots\"/>\n</PoolRSpec>").unwrap_err();
        assert_eq!((e.line, e.column), (2, 3), "{e}");
        assert!(e.message.contains("mem_limit"), "{e}");
        let e = RSpec::from_xml("<PoolRSpec>\n  <resources>\n</PoolRSpec>").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        let e = RSpec::from_xml("<Banana/>").unwrap_err();
        assert!(e.message.contains("unknown RSpec class"), "{e}");
        let e = RSpec::from_xml("<SliceRSpec vm_type=\"linux-vmware-x86\"/>").unwrap_err();
        assert!(e.message.contains("vm_type"), "{e}");
        let e = RSpec::from_xml("<VServerSlice>\n<key>not a key</key></VServerSlice>").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.starts_with("key:"), "{e}");
        let e = RSpec::from_xml("").unwrap_err();
        assert!(e.message.contains("empty"), "{e}");
        let e = RSpec::from_xml("<VServerSlice name=\"Bad Name\"/>").unwrap_err();
        assert!(e.message.starts_with("name:"), "{e}");
    }

    fn arb_q() -> impl Strategy<Value = Quantity> {
        (0u64..1_000_000_000).prop_map(Quantity::from_milli)
    }

    fn arb_rspec() -> impl Strategy<Value = RSpec> {
        let res = proptest::collection::vec(arb_q(), 6).prop_map(|v| Resources {
            cpu_share: v[0],
            disk_quota: v[1],
            mem_limit: v[2],
            base_rate: v[3],
            burst_rate: v[4],
            sustained_rate: v[5],
        });
        let name = proptest::option::of("[a-z][a-z0-9-]{0,5}(\\.[a-z][a-z0-9-]{0,5}){0,3}")
            .prop_map(|n| n.map(|n| SliceName::parse(&n).unwrap()));
        let vm_type = proptest::sample::select(VmType::ALL.to_vec());
        let slice = (name, vm_type.clone(), proptest::bool::ANY, proptest::option::of("[ -~\n\t]{0,80}")).prop_map(
            |(name, vm_type, key, bootscript)| {
                RSpecClass::Slice(SliceRSpec {
                    name,
                    vm_type,
                    keys: if key { vec![SshKey::parse(KEY).unwrap()] } else { vec![] },
                    bootscript,
                })
            },
        );
        let pool =
            (proptest::option::of(vm_type), proptest::option::of("[a-z]{1,8}"), proptest::option::of("[ -~\n]{0,40}"))
                .prop_map(|(vm_type, sa, cert)| {
                    RSpecClass::Pool(PoolRSpec {
                        vm_type,
                        slice_authorities: sa
                            .map(|n| SliceAuthorityRef {
                                name: SliceName::parse(&n).unwrap(),
                                url: format!("https://{n}.example.org/rpc?a=1&b=\"2\""),
                                certificate: cert.map(|c| c.trim().to_owned()),
                            })
                            .into_iter()
                            .collect(),
                    })
                });
        (prop_oneof![slice, pool], res).prop_map(|(class, resources)| RSpec { class, resources })
    }

    proptest! {
        #[test]
        fn xml_round_trip(r in arb_rspec()) {
            // Bootscripts are kept verbatim except that XML normalises CR/LF to LF.
            let r = RSpec { class: match r.class {
                RSpecClass::Slice(mut s) => { s.bootscript = s.bootscript.map(|b| b.replace('\r', "")); RSpecClass::Slice(s) }
                c => c,
            }, ..r };
            let xml = r.to_xml();
            prop_assert_eq!(RSpec::from_xml(&xml).unwrap(), r);
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let _ = RSpec::from_xml(&s);
        }
    }
}

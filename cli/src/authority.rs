//! `plab sa ...` and `plab ma ...`: every authority call from the command line.
//!
//! `plab sa create-slice plc.princeton.codeen` calls `CreateSlice(auth, "plc.princeton.codeen")`.
//! Each argument is read as the call's parameter in that position needs it, using the
//! same params types the server decodes: a parameter that takes text gets the word as
//! text (`set-slice-attr S mem_limit 512` sends `"512"`), one that takes a number, a
//! list or an object gets the word as JSON (`add-slice-node S [3,4]`), and a word that is
//! a JSON string (`'"x y"'`) is that string. `@FILE` is the file's text. `auth` comes
//! from the settings file: the client certificate, or none (anonymous calls like
//! `register-principal`).
//!
//! Settings (`--authority-config`, `$PLAB_AUTHORITY_CONFIG`, or
//! `~/.config/plab/authority.toml`), as `plab-authority init` writes them:
//! ```toml
//! url = "https://127.0.0.1:8443"
//! root = "/path/root.pem"       # the root CA certificate
//! cert = "/path/cert.pem"       # optional: your certificate chain
//! key = "/path/key.pem"         # optional: your private key
//! ```

use anyhow::Context;
use plab_authority::api::Part;
use plab_authority::{AuthorityClient, Method};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    root: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

fn settings_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os("PLAB_AUTHORITY_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".config/plab/authority.toml"))
}

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| p.display().to_string())
}

/// `create-slice` or `CreateSlice` to the method.
fn method_of(word: &str) -> Option<Method> {
    let camel: String = word
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
        })
        .collect();
    Method::parse(word).or_else(|| Method::parse(&camel)).or_else(|| {
        // Acronyms: get-slices-for-node works, get-rspec style names need exact forms.
        Method::ALL.iter().copied().find(|m| m.name().eq_ignore_ascii_case(&camel))
    })
}

fn kebab(m: Method) -> String {
    let mut out = String::new();
    for (i, c) in m.name().chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The words after the method as the method's params, each read as its parameter's type
/// needs: JSON where the word is JSON the parameter accepts, text otherwise.
fn args(m: Method, words: &[String]) -> anyhow::Result<Vec<Value>> {
    let names = m.params();
    if words.len() > names.len() {
        anyhow::bail!("{} takes at most {} arguments after auth ({})", m.name(), names.len(), names.join(", "));
    }
    let mut values = Vec::new();
    for w in words {
        values.push(match w.strip_prefix('@') {
            Some(file) => (Value::String(read(Path::new(file))?), None),
            None => (serde_json::from_str::<Value>(w).unwrap_or_else(|_| Value::String(w.clone())), Some(w.clone())),
        });
    }
    // Try the JSON reading; where the server's decoder refuses a parameter read as JSON,
    // read that word as text instead, and try again. If the text is refused too, the
    // JSON reading's error is the one that says what is wrong.
    let mut first_error: Option<(usize, String)> = None;
    loop {
        let by_name: serde_json::Map<String, Value> =
            names.iter().zip(&values).map(|(n, (v, _))| (n.to_string(), v.clone())).collect();
        match plab_authority::api::Request::decode(m.name(), Value::Object(by_name)) {
            Ok(_) => return Ok(values.into_iter().map(|(v, _)| v).collect()),
            Err(e) => {
                let field = e.message.split([':', '.', '[']).next().unwrap_or("");
                let retry = names.iter().position(|n| *n == field).filter(|i| {
                    let (v, word) = &values[*i];
                    word.as_ref().is_some_and(|w| !matches!(v, Value::String(s) if s == w))
                });
                let at = names.iter().position(|n| *n == field);
                match (retry, &first_error) {
                    (Some(i), _) => {
                        first_error = Some((i, e.message.clone()));
                        let word = values[i].1.clone().unwrap_or_default();
                        values[i] = (Value::String(word), None);
                    }
                    (None, Some((i, first))) if Some(*i) == at => anyhow::bail!("{}: {first}", m.name()),
                    (None, _) => anyhow::bail!("{}: {}", m.name(), e.message),
                }
            }
        }
    }
}

fn settings(config: Option<PathBuf>) -> anyhow::Result<Settings> {
    let path = settings_path(config);
    toml::from_str(&read(&path)?).with_context(|| path.display().to_string())
}

/// Redeems `ticket` at the ticket endpoint `node` (`https://host:port`), trusting the
/// authority settings' root.
pub fn redeem(
    config: Option<PathBuf>,
    node: &str,
    ticket: credentials::ticket::SignedTicket,
) -> anyhow::Result<plab_scs::api::Redeemed> {
    let s = settings(config)?;
    let root = read(&s.root)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let https = plab_authority::client::Https::new(node, &root, None, None)?;
        let mut c = jsonrpc::AsyncClient::new(https);
        let r = c
            .call::<plab_scs::api::calls::RedeemTicket>(&plab_scs::api::RedeemParams { ticket })
            .await
            .map_err(|e| anyhow::anyhow!("{node}: {e}"))?;
        Ok(r)
    })
}

/// Slice status as a table: one row per node.
fn slice_status_table(v: &Value) -> Option<String> {
    let slivers = v.get("slivers")?.as_array()?;
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY).set_header(["NODE", "HOST", "STATE", "SSH", "NOTE"]);
    let s = |x: &Value| x.as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
    for n in slivers {
        t.add_row([n["node_id"].to_string(), s(&n["hostname"]), s(&n["state"]), s(&n["ssh"]), s(&n["message"])]);
    }
    Some(format!(
        "slice {} ({} {}), expires {}\n{t}\n",
        s(&v["slice"]),
        s(&v["state"]["mode"]),
        s(&v["state"]["run"]),
        v["expires"]
    ))
}

/// Runs `plab sa|ma WORDS...`.
pub fn run(part: Part, config: Option<PathBuf>, words: &[String], json: bool) -> anyhow::Result<()> {
    let list = |part: Part| -> String {
        Method::ALL
            .iter()
            .filter(|m| m.part() == part || m.part() == Part::Both)
            .map(|m| format!("  {}", kebab(*m)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let Some(word) = words.first() else {
        println!("methods:\n{}", list(part));
        return Ok(());
    };
    let m = method_of(word).ok_or_else(|| anyhow::anyhow!("no method {word:?}; methods:\n{}", list(part)))?;
    if m.part() != part && m.part() != Part::Both && !(part == Part::Ma && m.part() == Part::Boot) {
        anyhow::bail!(
            "{} belongs to the other authority (use `plab {}`)",
            m.name(),
            if part == Part::Sa { "ma" } else { "sa" }
        );
    }
    let s = settings(config)?;
    let root = read(&s.root)?;
    let identity = match (&s.cert, &s.key) {
        (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
        _ => None,
    };
    let mut c = AuthorityClient::new(&s.url, &root, identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str())), None)?;
    let params = args(m, &words[1..])?;
    let v = c.call(m.name(), params)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if let Some(table) = (m == Method::GetSliceStatus).then(|| slice_status_table(&v)).flatten() {
        print!("{table}");
    } else {
        print!("{}", crate::render(&v));
    }
    Ok(())
}

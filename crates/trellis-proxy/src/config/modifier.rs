//! Header set/add/remove, compiled to typed header names and values once per snapshot.
use http::{HeaderMap, HeaderName, HeaderValue};

#[derive(Debug, Clone, Default)]
pub struct HeaderModifier {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

fn pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))?;
    let v =
        HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name:?}"))?;
    Ok((n, v))
}

impl HeaderModifier {
    pub fn compile(m: &trellis_api::route::HeaderModifier) -> Result<Self, String> {
        Ok(Self {
            set: m
                .set
                .iter()
                .map(|(k, v)| pair(k, v))
                .collect::<Result<_, _>>()?,
            add: m
                .add
                .iter()
                .map(|(k, v)| pair(k, v))
                .collect::<Result<_, _>>()?,
            remove: m
                .remove
                .iter()
                .map(|k| {
                    HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| format!("invalid header name {k:?}"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

//! `trellis ca`: look at the mesh certificate authority and rotate its root.
//!
//! A root rotation without an outage is three steps, each one command, so an operator can wait
//! between them: `add-root` (the new root joins every proxy's trust bundle), `activate ID` (new
//! certificates chain to it; proxies move over at their next renewal), and after at least one
//! certificate lifetime `retire OLD` (certificates from the old root are refused from then on).
use crate::ctl::{encode, print_value, Api, ControlArgs, Output, TokenArgs};
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args, Debug, Clone)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
}

/// The control plane to talk to, and the token it requires.
#[derive(Args, Debug, Clone)]
pub struct Target {
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub auth: TokenArgs,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CaCommand {
    /// Show the trust domain, the signers (which one signs), and the trust bundle.
    Show {
        #[command(flatten)]
        target: Target,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Generate a new root: trusted by every proxy at once, not signing yet.
    AddRoot {
        #[command(flatten)]
        target: Target,
    },
    /// Sign new certificates with signer ID (once every proxy holds the new trust bundle).
    Activate {
        /// Signer id, as `trellis ca show` lists it.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove signer ID and its root from the trust bundle (not the active signer).
    Retire {
        /// Signer id, as `trellis ca show` lists it.
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(args: CaArgs) -> anyhow::Result<()> {
    match args.command {
        CaCommand::Show { target, output } => {
            let api = Api::connect(&target.control, &target.auth)?;
            let ca = api.call(http::Method::GET, "/api/v1/ca", None).await?;
            match output {
                Output::Table => print_table(&ca),
                other => print_value(&ca, other)?,
            }
        }
        CaCommand::AddRoot { target } => {
            let api = Api::connect(&target.control, &target.auth)?;
            let v = api
                .call(http::Method::POST, "/api/v1/ca/roots", None)
                .await?;
            let id = v["id"].as_str().unwrap_or_default();
            println!("added root {id}: trusted now, not signing yet");
            println!("next, once every proxy holds the new trust bundle: trellis ca activate {id}");
        }
        CaCommand::Activate { id, target } => {
            let api = Api::connect(&target.control, &target.auth)?;
            let path = format!("/api/v1/ca/roots/{}/activate", encode(&id));
            api.call(http::Method::POST, &path, None).await?;
            println!("signer {id} now signs new certificates");
            println!("after one certificate lifetime, retire the previous signer: trellis ca retire OLD_ID");
        }
        CaCommand::Retire { id, target } => {
            let api = Api::connect(&target.control, &target.auth)?;
            let path = format!("/api/v1/ca/roots/{}", encode(&id));
            api.call(http::Method::DELETE, &path, None).await?;
            println!("retired signer {id}: its root left the trust bundle");
        }
    }
    Ok(())
}

fn print_table(ca: &Value) {
    println!(
        "trust domain {}, active signer {}",
        ca["trustDomain"].as_str().unwrap_or_default(),
        ca["active"].as_str().unwrap_or_default()
    );
    println!(
        "{:<42} {:<7} {:<5} {:<20} SUBJECT",
        "ID", "ACTIVE", "ROOT", "NOT AFTER (UTC)"
    );
    for s in ca["signers"].as_array().into_iter().flatten() {
        println!(
            "{:<42} {:<7} {:<5} {:<20} {}",
            s["id"].as_str().unwrap_or_default(),
            if s["active"] == true { "yes" } else { "no" },
            if s["isRoot"] == true { "yes" } else { "no" },
            utc(&s["notAfter"]),
            s["subject"].as_str().unwrap_or_default()
        );
    }
}

/// A serialized `SystemTime` (`{"secs_since_epoch": ..}`) as `YYYY-MM-DD HH:MM:SS`.
fn utc(t: &Value) -> String {
    let Some(secs) = t["secs_since_epoch"].as_u64() else {
        return "-".into();
    };
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc;
    use serde_json::json;

    #[test]
    fn formats_system_times() {
        assert_eq!(utc(&json!({"secs_since_epoch": 0})), "1970-01-01 00:00:00");
        assert_eq!(
            utc(&json!({"secs_since_epoch": 951_782_400u64 + 3661})),
            "2000-02-29 01:01:01"
        );
        assert_eq!(
            utc(&json!({"secs_since_epoch": 4_102_444_799u64})),
            "2099-12-31 23:59:59"
        );
        assert_eq!(utc(&json!(null)), "-");
    }
}

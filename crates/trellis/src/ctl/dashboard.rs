//! `trellis dashboard`: prints (and with `--open`, opens) the address of the control plane's
//! dashboard with a one-time login link, so the join token itself never goes into a browser's
//! address bar or history. The link is good once, for two minutes.
use super::*;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub auth: TokenArgs,
    /// Open the link in a browser (with `xdg-open`).
    #[arg(long)]
    pub open: bool,
}

/// `trellis dashboard`.
pub async fn dashboard(args: DashboardArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.control, &args.auth)?;
    let reply = api
        .reply(http::Method::POST, "/dashboard/api/login-codes", None)
        .await
        .map_err(|e| anyhow::anyhow!("cannot get a login link from the control plane: {e}"))?;
    let path = reply.value["path"]
        .as_str()
        .context("the control plane's answer has no login path")?;
    let base = reply.replica.trim_end_matches('/');
    let link = format!("{base}{path}");
    println!("dashboard: {base}/dashboard/");
    println!("one-time login link (good once, for two minutes): {link}");
    if args.open {
        match std::process::Command::new("xdg-open")
            .arg(&link)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
        {
            Ok(s) if s.success() => println!("opened in the browser"),
            Ok(s) => eprintln!("xdg-open failed ({s}); open the link yourself"),
            Err(e) => eprintln!("cannot run xdg-open ({e}); open the link yourself"),
        }
    }
    Ok(())
}

//! Duration strings: units, combinations, zero, and the errors users hit.
mod common;

use common::*;
use std::time::Duration as Std;
use trellis_api::duration::DurationError;
use trellis_api::Duration;

fn d(s: &str) -> Result<Std, DurationError> {
    s.parse::<Duration>().map(|d| d.as_std())
}

#[test]
fn units_and_combinations() {
    assert_eq!(d("250ms").unwrap(), Std::from_millis(250));
    assert_eq!(d("2s").unwrap(), Std::from_secs(2));
    assert_eq!(d("1m30s").unwrap(), Std::from_secs(90));
    assert_eq!(d("24h").unwrap(), Std::from_secs(86_400));
    assert_eq!(d("1h1m1s1ms1us1ns").unwrap(), Std::new(3661, 1_001_001));
    assert_eq!(d("1500us").unwrap(), Std::from_micros(1500));
    assert_eq!(d("7µs").unwrap(), Std::from_micros(7));
    assert_eq!(d("  3s ").unwrap(), Std::from_secs(3));
    assert_eq!(d("90m").unwrap(), Std::from_secs(5400));
}

#[test]
fn zero() {
    assert_eq!(d("0").unwrap(), Std::ZERO);
    assert_eq!(d("0s").unwrap(), Std::ZERO);
    assert_eq!(d("0ms").unwrap(), Std::ZERO);
    assert!(Duration::default().is_zero());
}

#[test]
fn errors_say_why() {
    let reason = |s: &str| d(s).unwrap_err().reason;
    assert_eq!(reason("5"), "missing unit");
    assert_eq!(reason("1m30"), "missing unit");
    assert_eq!(reason(""), "empty");
    assert_eq!(reason("   "), "empty");
    assert_eq!(reason("5d"), "unknown unit");
    assert_eq!(reason("5 s"), "missing unit");
    assert_eq!(reason("5S"), "unknown unit");
    assert_eq!(reason("1.5s"), "missing unit");
    assert_eq!(reason("-5s"), "expected a number");
    assert_eq!(reason("s"), "expected a number");
    assert_eq!(reason("5sms"), "unknown unit");
    // Overflow, in the number itself, the multiplication, the sum, and the seconds.
    assert_eq!(reason(&format!("{}s", "9".repeat(40))), "number too large");
    assert_eq!(
        reason(&format!("{}h", u128::MAX / 3_600_000_000_000 + 1)),
        "too large"
    );
    assert_eq!(
        reason(&format!("{}ns{}ns", u128::MAX, u128::MAX)),
        "too large"
    );
    assert_eq!(reason(&format!("{}s", u64::MAX as u128 + 1)), "too large");
    // The largest representable duration parses.
    assert_eq!(
        d(&format!("{}s", u64::MAX)).unwrap(),
        Std::from_secs(u64::MAX)
    );
    // The message names the input and the accepted units.
    let msg = d("5").unwrap_err().to_string();
    assert!(
        msg.contains("\"5\"") && msg.contains("units: ns, us, ms, s, m, h"),
        "{msg}"
    );
}

#[test]
fn display_is_the_shortest_exact_unit_and_parses_back() {
    for (s, shown) in [
        ("0", "0s"),
        ("90s", "90s"),
        ("120s", "2m"),
        ("3600s", "1h"),
        ("1500ms", "1500ms"),
        ("1m30s", "90s"),
        ("1001us", "1001us"),
        ("7ns", "7ns"),
        ("25h", "25h"),
    ] {
        let v: Duration = s.parse().unwrap();
        assert_eq!(v.to_string(), shown, "{s}");
        assert_eq!(shown.parse::<Duration>().unwrap(), v);
    }
    let max = Duration(Std::MAX);
    assert_eq!(max.to_string().parse::<Duration>().unwrap(), max);
}

#[test]
fn in_yaml() {
    let route = |timeout: &str| with(&doc("Route", "reviews"), "spec.rules[0].timeout", timeout);
    let dp = doc("DestinationPolicy", "reviews");
    let in_set = |t: &str| format!("{}---\n{dp}", route(t));
    // A bare number is only accepted when it is 0 (and 0 is then rejected as a timeout).
    let e = expect(
        &in_set("5"),
        "spec.rules[0].timeout",
        "a number needs a unit, e.g. \"5ms\" or \"5s\"",
    );
    assert_eq!(e.kind.as_deref(), Some("Route"));
    expect(
        &in_set("0"),
        "spec.rules[0].timeout",
        "must be greater than 0",
    );
    expect(&in_set("-1"), "spec.rules[0].timeout", "negative");
    expect(
        &in_set("1.5"),
        "spec.rules[0].timeout",
        "expected a duration",
    );
    expect(&in_set("5d"), "spec.rules[0].timeout", "unknown unit");
    expect(
        &in_set("[1s]"),
        "spec.rules[0].timeout",
        "expected a duration",
    );
    let set = valid(&in_set("1m30s"));
    assert_eq!(
        set.routes().next().unwrap().spec.rules[0].timeout,
        Some(Duration::from_secs(90))
    );
}

//! Kubernetes resource quantities (`100m`, `1.5`, `512Mi`, `1e3`, `2G`) as the integers the
//! scheduler compares: milli-units for CPU (`MilliValue`), whole units for everything else
//! (`Value`). Both round up, as apimachinery's `resource.Quantity` does, so a request of
//! `0.1m` CPU still counts as 1m and never fits into nothing.

/// Why a quantity string was rejected (the scheduler then treats the pod as invalid input:
/// the API server validated it, so this only happens with a foreign or broken server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityError(pub String);

impl std::fmt::Display for QuantityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} is not a Kubernetes quantity (expected e.g. 100m, 2, 1.5Gi, 1e3)",
            self.0
        )
    }
}

impl std::error::Error for QuantityError {}

/// `s` scaled by 10^`scale10` (3 for milli-units, 0 for units), rounded up, saturating at
/// `i64::MAX`.
fn parse_scaled(s: &str, scale10: i32) -> Result<i64, QuantityError> {
    let err = || QuantityError(s.to_string());
    let t = s.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(err());
    }
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    // Mantissa as an integer of all digits; its decimal exponent is minus the fraction's length.
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(err());
    }
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| err())?
    };
    let mut exp10: i32 = -(frac_part.len() as i32);
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        e if e.starts_with(['e', 'E']) => {
            let x: i32 = e[1..].parse().map_err(|_| err())?;
            if x.abs() > 40 {
                return Err(err());
            }
            exp10 += x;
        }
        _ => return Err(err()),
    }
    exp10 += scale10;
    let mut v = mantissa.checked_mul(1i128 << exp2).unwrap_or(i128::MAX);
    if exp10 >= 0 {
        for _ in 0..exp10 {
            v = v.saturating_mul(10);
        }
    } else {
        let mut div: i128 = 1;
        for _ in 0..(-exp10).min(38) {
            div = div.saturating_mul(10);
        }
        // Round up (away from zero for positives), as Quantity.MilliValue/Value do.
        v = v / div + i128::from(v % div != 0);
    }
    let v = i64::try_from(v).unwrap_or(i64::MAX);
    Ok(if neg { -v } else { v })
}

/// CPU in milli-cores (`Quantity.MilliValue()`).
pub fn milli_value(s: &str) -> Result<i64, QuantityError> {
    parse_scaled(s, 3)
}

/// Bytes, pods, extended resources (`Quantity.Value()`).
pub fn value(s: &str) -> Result<i64, QuantityError> {
    parse_scaled(s, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_forms() {
        for (s, milli) in [
            ("100m", 100),
            ("1", 1000),
            ("1.5", 1500),
            ("0.1m", 1),
            ("2k", 2_000_000),
            ("1e3", 1_000_000),
            ("0", 0),
            ("250u", 1),
        ] {
            assert_eq!(milli_value(s), Ok(milli), "{s}");
        }
        for (s, v) in [
            ("512Mi", 512 << 20),
            ("1Gi", 1 << 30),
            ("1G", 1_000_000_000),
            ("110", 110),
            ("1.5Ki", 1536),
            ("100m", 1),
            ("2E", 2_000_000_000_000_000_000),
        ] {
            assert_eq!(value(s), Ok(v), "{s}");
        }
        assert_eq!(value("8Ei"), Ok(i64::MAX), "saturates");
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "abc", "1.2.3", "5Xi", "1e", ".", "1 Gi"] {
            assert!(value(s).is_err(), "{s:?} must be rejected");
        }
    }
}

//! A segment's fence against arbiters that no longer act: the highest
//! epoch whose order it obeyed. Every acting arbiter's epoch is above all
//! before it (the coordinator's leadership, or the catalog file's counter),
//! so an order of an older epoch comes from an arbiter that was replaced,
//! however late it arrives.

/// What to do with an order of `epoch` at a segment that obeyed `obeyed`:
/// `Ok(Some(e))` obey it, recording `e` durably first; `Ok(None)` obey it
/// (nothing new to record); `Err` refuse it, saying why.
pub fn admit(obeyed: u64, epoch: u64) -> Result<Option<u64>, String> {
    if epoch < obeyed {
        return Err(format!(
            "an order of arbiter epoch {epoch}, and this segment obeyed epoch {obeyed}: that arbiter no longer acts"
        ));
    }
    Ok((epoch > obeyed).then_some(epoch))
}

/// A role order without an epoch (from an arbiter without epochs, or a
/// test driving the segment by hand): obeyed only while no epoch was.
pub fn admit_unfenced(obeyed: u64) -> Result<(), String> {
    match obeyed {
        0 => Ok(()),
        e => Err(format!(
            "an order without an arbiter epoch, and this segment obeyed epoch {e}: only the acting arbiter orders it"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_epochs_are_refused_newer_recorded() {
        assert_eq!(admit(0, 0), Ok(None));
        assert_eq!(admit(0, 3), Ok(Some(3)));
        assert_eq!(admit(3, 3), Ok(None));
        assert_eq!(admit(3, 9), Ok(Some(9)));
        assert!(admit(9, 3).unwrap_err().contains("epoch 3"));
        assert_eq!(admit_unfenced(0), Ok(()));
        assert!(admit_unfenced(4).unwrap_err().contains("epoch 4"));
    }
}

//! Compile-time behaviour of `#[distributed_lock]`: what it accepts (ui/pass, which also
//! run) and the error for each misuse (ui/fail, `.stderr` snapshots reviewed by eye;
//! regenerate with `TRYBUILD=overwrite cargo test -p lock-tests --test ui`).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}

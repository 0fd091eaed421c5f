//! Compile-time behaviour of `#[distributed_lock]`: what it accepts (tests/ui/pass, which also
//! run) and the error for each misuse (tests/ui/fail, `.stderr` snapshots reviewed by eye;
//! regenerate with `TRYBUILD=overwrite cargo test --test ui`).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}

pub mod expr;
pub mod model;

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;

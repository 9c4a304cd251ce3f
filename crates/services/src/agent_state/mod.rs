pub mod model;

#[cfg(test)]
mod tests;

"""What the rest of lab2prod builds on: settings, errors, atomic files, the workspace layout, storage rules,
console, lineage, DVC invocation and scoring."""

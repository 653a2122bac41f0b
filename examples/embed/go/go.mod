module classify

go 1.21

require digits v0.0.0

// The package exported by `distill export digits.distill --lang go --name digits -o model`.
replace digits => ./model

// Command classify reads feature rows (comma-separated floats, one sample per line) from
// stdin and prints the predicted label of each, using the exported digits package.
//
//	distill train ../../digits.toml -o digits.distill
//	distill export digits.distill --lang go --name digits -o model
//	go run . < rows.csv
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"digits"
)

func main() {
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	row := make([]float32, digits.InputSize)
	for line := 1; scanner.Scan(); line++ {
		text := strings.TrimSpace(scanner.Text())
		if text == "" {
			continue
		}
		fields := strings.Split(text, ",")
		if len(fields) != digits.InputSize {
			fmt.Fprintf(os.Stderr, "line %d: expected %d numbers, got %d\n", line,
				digits.InputSize, len(fields))
			os.Exit(1)
		}
		for i, f := range fields {
			v, err := strconv.ParseFloat(strings.TrimSpace(f), 32)
			if err != nil {
				fmt.Fprintf(os.Stderr, "line %d: %v\n", line, err)
				os.Exit(1)
			}
			row[i] = float32(v)
		}
		label, err := digits.PredictClass(row)
		if err != nil {
			fmt.Fprintf(os.Stderr, "line %d: %v\n", line, err)
			os.Exit(1)
		}
		fmt.Println(digits.Labels[label])
	}
	if err := scanner.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

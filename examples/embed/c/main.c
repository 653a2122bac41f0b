/*
 * Reads feature rows (comma-separated floats, one sample per line) from stdin and prints the
 * predicted label of each, using the model exported to model/digits.{c,h}.
 */
#include <stdio.h>
#include <stdlib.h>

#include "digits.h"

static int read_row(float *row)
{
    int i;

    for (i = 0; i < DIGITS_INPUT_SIZE; ++i) {
        if (scanf(i == 0 ? " %f" : " ,%f", &row[i]) != 1) {
            return i == 0 ? 0 : -1;
        }
    }
    return 1;
}

int main(void)
{
    float row[DIGITS_INPUT_SIZE];
    int status;
    int line = 0;

    while ((status = read_row(row)) == 1) {
        int label = digits_predict_class(row);
        ++line;
        if (label < 0) {
            fprintf(stderr, "prediction failed on line %d\n", line);
            return 1;
        }
        printf("%s\n", digits_labels[label]);
    }
    if (status < 0) {
        fprintf(stderr, "line %d: expected %d comma-separated numbers\n", line + 1,
                DIGITS_INPUT_SIZE);
        return 1;
    }
    return 0;
}

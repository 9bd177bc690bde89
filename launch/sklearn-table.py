"""Write one of the tables scikit-learn ships as a CSV file with a header and a `target` column,
for trying hvdl on a real table (scikit-learn is needed for this script only).

    pip install scikit-learn
    python launch/sklearn-table.py digits /tmp/digits.csv          # 1,797 rows × 64 + target
    python launch/sklearn-table.py breast_cancer /tmp/cancer.csv   # 569 rows × 30 + target
"""

import argparse
import csv
import sys

TABLES = ("digits", "breast_cancer", "wine", "iris")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=TABLES)
    parser.add_argument("out")
    args = parser.parse_args()
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{args.table}")()
    names = [str(n).replace(" ", "_") for n in getattr(bunch, "feature_names",
                                                      range(bunch.data.shape[1]))]
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*names, "target"])
        for row, target in zip(bunch.data, bunch.target):
            writer.writerow([f"{v:g}" for v in row] + [bunch.target_names[target]
                                                       if args.table != "digits" else target])
    print(f"wrote {args.out}: {bunch.data.shape[0]} rows, {bunch.data.shape[1]} features, "
          f"{len(set(bunch.target))} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

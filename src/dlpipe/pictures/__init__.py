"""Pictures the stages write beside their metrics: LR range test curves, sample and image grids, confusion matrices."""

"""From candidate grids to answers, without torch: voting, product-of-experts selection, the accuracy metrics and the Kaggle submission file."""

"""Training: the schedule and optimizer (`optim`), checkpoints (`checkpoint`), the stage
runners that pick data and objective (`stages`), and the one loop every stage runs (`loop`)."""

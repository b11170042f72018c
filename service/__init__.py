"""WeCare: receives ultrasound studies, runs the models, sends back SEG + SR."""

. /work/venv/bin/activate
T=button-press-topdown-v3; C=pt/model.safetensors; N=50000
python exp_ft.py ctl-lr0 $T $C 0 $N none '{"lr":1e-12}'
python exp_ft.py default $T $C 0 $N none '{}'
python exp_ft.py mean-bc $T $C 0 $N mean '{}'
python exp_ft.py mean-none $T $C 0 $N mean '{"reg":"none"}'
python exp_ft.py noppo-bc $T $C 0 $N noppo '{}'

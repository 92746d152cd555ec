/* The kernels of fiber_conv.cpp, called by the operators of ops.cpp. Layouts and arguments are described at each
 * definition; every function with an mf_sched works on the items [item0, item1) of its problem. */
#pragma once

typedef struct {
    int next;
    int active;
} mf_sched;

void mf_set_avx512(int on);
void mf_set_winograd(int on);
void mf_pack(const float *x, const float *scale, const float *shift, float *buf, int D, int H, int W, int G, int CI,
             int Dp, int Hp, int Wp, int pd, int ph, int pw, mf_sched *sched, int item0, int item1);
int mf_mux_pack(const float *x, const float *s_i, const float *t_i, const float *w1, const float *b1, const float *w2,
                const float *b2, int M, const float *s_m, const float *t_m, float *buf, float *out, int N, int D,
                int H, int W, int G, int CI, int Dp, int Hp, int Wp, int pd, int ph, int pw, int R, const float *s_w,
                const float *t_w, float *proj, int SD, int SH, int SW, mf_sched *sched, int item0, int item1);
void mf_conv(const float *buf, const float *weight, const float *bias, int D, int H, int W, int G, int CI, int CO,
             int KT, int KH, int KW, int ST, int Dp, int Hp, int Wp, int relu, float *out_buf, int qd, int qh, int qw,
             int Wq, float *out_cl, const float *add, const float *wino, mf_sched *sched, int item0, int item1);
int mf_conv_dense(const float *buf, const float *weight, const float *bias, int D, int H, int W, int G, int CI, int CO,
                  int KT, int KH, int KW, int ST, int Dp, int Hp, int Wp, int relu, const float *w_post,
                  const float *b_post, int C_post, float *out, const float *add, const float *extra, int CX, int SS,
                  mf_sched *sched, int item0, int item1);
int mf_tail(const float *buf, const float *w1, const float *b1, const float *w2, const float *b2, int D, int H, int W,
            int G, int CI, int CM, int CO, int KT1, int KH1, int KW1, int ST, int KH2, int KW2, int Dp, int Hp, int Wp,
            float *out, const float *add, const float *u1, const float *u2, mf_sched *sched, int item0, int item1);
void mf_conv_wgrad(const float *bx, const float *bg, float *dw, float *scratch, int N, int D, int H, int W, int G,
                   int CI, int CO, int KT, int KH, int KW, int ST, int Dp, int Hp, int Wp, int qd, int qh, int qw,
                   int Wq, mf_sched *sched, int item0, int item1);
void mf_bn_stats(const float *x, const float *k, double *s1, double *s2, long P, int C, mf_sched *sched, int item0,
                 int item1);
void mf_bn_relu(const float *x, const float *scale, const float *shift, float *y, long P, int C, mf_sched *sched,
                int item0, int item1);
void mf_bn_relu_grad_sums(const float *x, const float *dy, const float *scale, const float *shift, const float *mean,
                          double *s1, double *s2, long P, int C, mf_sched *sched, int item0, int item1);
void mf_bn_relu_grad_input(const float *x, const float *dy, const float *scale, const float *shift,
                           const float *mean, const float *a, const float *bb, const float *d, float *dx, long P,
                           int C, mf_sched *sched, int item0, int item1);
void mf_max_pool(const float *x, float *y, int N, int D, int H, int W, int C, int KH, int KW, int SH, int SW, int PH,
                 int PW, int Ho, int Wo, mf_sched *sched, int item0, int item1);
